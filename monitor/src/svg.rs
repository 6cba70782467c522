//! svg.rs: charts drawn on the server as SVG markup (no chart library, no script).
//!
//! Colours are presentation attributes, not `style`, so the Content-Security-Policy needs no
//! 'unsafe-inline'; every label goes through `esc`.

use crate::html::esc;

pub struct Series<'a> {
    pub name: &'a str,
    /// A CSS colour literal chosen here, never from data.
    pub color: &'static str,
    pub values: Vec<f64>,
}

const W: f64 = 760.0;
const H: f64 = 220.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 36.0;
const TOP: f64 = 24.0;

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

/// bars draws grouped bars: one group per label, one bar per series; `marks` are label indexes
/// drawn with a red marker above (anomalies).
pub fn bars(title: &str, labels: &[String], series: &[Series], marks: &[usize]) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let plot_w = W - LEFT - 8.0;
    let plot_h = H - TOP - BOTTOM;
    let n = labels.len().max(1) as f64;
    let group = plot_w / n;
    let bar = (group * 0.8 / series.len().max(1) as f64).max(1.0);
    let mut s = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(title)
    );
    s.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#888\"/><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{y}\" stroke=\"#888\"/>",
        y = TOP + plot_h,
        x2 = W - 8.0
    ));
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\" fill=\"#555\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\" fill=\"#555\">0</text>",
        LEFT - 4.0,
        TOP + 4.0,
        esc(&num(max)),
        LEFT - 4.0,
        TOP + plot_h
    ));
    // About eight labels fit under the axis.
    let every = labels.len().div_ceil(8).max(1);
    for (i, label) in labels.iter().enumerate() {
        let x0 = LEFT + i as f64 * group + group * 0.1;
        for (k, ser) in series.iter().enumerate() {
            let v = ser.values.get(i).copied().unwrap_or(0.0);
            let h = plot_h * v / max;
            s.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} {}</title></rect>",
                x0 + k as f64 * bar,
                TOP + plot_h - h,
                bar,
                h,
                ser.color,
                esc(label),
                esc(&num(v)),
                esc(ser.name)
            ));
        }
        if marks.contains(&i) {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"#d22\"><title>{}: anomaly</title></circle>",
                x0 + group * 0.4,
                TOP - 8.0,
                esc(label)
            ));
        }
        if i % every == 0 {
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#555\">{}</text>",
                x0,
                H - BOTTOM + 14.0,
                esc(label)
            ));
        }
    }
    let mut lx = LEFT;
    for ser in series {
        s.push_str(&format!(
            "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#333\">{}</text>",
            H - 14.0,
            ser.color,
            lx + 14.0,
            H - 5.0,
            esc(ser.name)
        ));
        lx += 24.0 + 7.0 * ser.name.len() as f64;
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_names_are_escaped() {
        let s = bars(
            "<t>",
            &["<script>".to_string()],
            &[Series {
                name: "a&b",
                color: "#36c",
                values: vec![3.0],
            }],
            &[0],
        );
        assert!(!s.contains("<script>") && !s.contains("<t>"), "{s}");
        assert!(s.contains("&lt;script&gt;: 3 a&amp;b"), "{s}");
        assert!(s.contains("<circle"), "{s}");
    }
}
