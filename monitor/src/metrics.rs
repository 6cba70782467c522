//! metrics.rs: `/metrics`, the Prometheus text (version 0.0.4) of every configured database.
//!
//! Each database's `activity_log.metrics_text()` is parsed into families, every sample gains a
//! `target` label (the monitor's name for the database), and the families are merged so that
//! each `# HELP` / `# TYPE` appears once, as the format requires. The monitor adds
//! `activity_log_monitor_up` and `activity_log_health_score` per target.

use std::collections::BTreeMap;

/// Family is one metric's help, type and samples (each line without the name).
#[derive(Default)]
struct Family {
    help: String,
    kind: String,
    samples: Vec<String>,
}

/// label_value escapes a label value as the format requires.
pub fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Exposition collects the families in the order they first appear.
#[derive(Default)]
pub struct Exposition {
    order: Vec<String>,
    families: BTreeMap<String, Family>,
}

impl Exposition {
    fn family(&mut self, name: &str) -> &mut Family {
        if !self.families.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.families.entry(name.to_string()).or_default()
    }

    /// add_text merges one database's metrics_text() under `target`.
    pub fn add_text(&mut self, target: &str, text: &str) {
        let t = format!("target=\"{}\"", label_value(target));
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                if let Some((name, help)) = rest.split_once(' ') {
                    self.family(name).help = help.to_string();
                }
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    self.family(name).kind = kind.to_string();
                }
            } else if l.is_empty() || l.starts_with('#') {
                continue;
            } else if let Some(brace) = l.find('{') {
                // name{labels} value: the target goes first among the labels.
                let name = &l[..brace];
                let rest = &l[brace + 1..];
                let sample = if rest.starts_with('}') {
                    format!("{{{t}{rest}")
                } else {
                    format!("{{{t},{rest}")
                };
                self.family(name).samples.push(sample);
            } else if let Some((name, value)) = l.split_once(' ') {
                self.family(name).samples.push(format!("{{{t}}} {value}"));
            }
        }
    }

    /// add is one sample of the monitor's own families.
    pub fn add(&mut self, name: &str, kind: &str, help: &str, target: &str, value: f64) {
        let f = self.family(name);
        f.kind = kind.to_string();
        f.help = help.to_string();
        f.samples
            .push(format!("{{target=\"{}\"}} {value}", label_value(target)));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let f = &self.families[name];
            if !f.help.is_empty() {
                out.push_str(&format!("# HELP {name} {}\n", f.help));
            }
            if !f.kind.is_empty() {
                out.push_str(&format!("# TYPE {name} {}\n", f.kind));
            }
            for s in &f.samples {
                out.push_str(name);
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_merge_and_gain_the_target_label() {
        let mut e = Exposition::default();
        let text = "# HELP activity_log_queued_records Records.\n# TYPE activity_log_queued_records gauge\nactivity_log_queued_records{database=\"a\"} 0\n";
        e.add_text("db1", text);
        e.add_text("d\"b2", text);
        e.add(
            "activity_log_monitor_up",
            "gauge",
            "1 when reachable.",
            "db1",
            1.0,
        );
        assert_eq!(
            e.render(),
            "# HELP activity_log_queued_records Records.\n# TYPE activity_log_queued_records gauge\n\
             activity_log_queued_records{target=\"db1\",database=\"a\"} 0\n\
             activity_log_queued_records{target=\"d\\\"b2\",database=\"a\"} 0\n\
             # HELP activity_log_monitor_up 1 when reachable.\n# TYPE activity_log_monitor_up gauge\n\
             activity_log_monitor_up{target=\"db1\"} 1\n"
        );
    }
}
