//! pgpass.rs: the PostgreSQL password as libpq finds it when the URL has none — `PGPASSWORD`,
//! then the password file (`PGPASSFILE`, else `~/.pgpass`) — so that no password need be on the
//! monitor's command line, where every local user can read it (`ps`).

use tokio_postgres::Config;
use tokio_postgres::config::Host;

/// password is the password for `cfg`'s connection, or None.
pub fn password(cfg: &Config) -> Option<String> {
    if let Ok(p) = std::env::var("PGPASSWORD")
        && !p.is_empty()
    {
        return Some(p);
    }
    let path = match std::env::var_os("PGPASSFILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
    };
    let meta = std::fs::metadata(&path).ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        // libpq's rule: a password file others may read is ignored, with a warning.
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "activity_log_monitor: warning: password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(&path).ok()?;
    // A socket directory counts as "localhost", as in libpq.
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = cfg.get_user().unwrap_or_default();
    let db = cfg.get_dbname().unwrap_or(user);
    lookup(&text, &host, &port, db, user)
}

/// lookup finds the first line `host:port:database:user:password` that matches (`*` matches
/// anything; `\` escapes `:` and `\`).
fn lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let ok = |f: &str, v: &str| f == "*" || f == v;
        if ok(&fields[0], host)
            && ok(&fields[1], port)
            && ok(&fields[2], db)
            && ok(&fields[3], user)
        {
            return Some(fields.pop().unwrap_or_default());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_follows_libpq() {
        let t = "# comment\nother:5432:*:*:no\nlocalhost:5433:app:monitor:a\\:b\\\\c\n*:*:*:monitor:any\n";
        assert_eq!(
            lookup(t, "localhost", "5433", "app", "monitor").as_deref(),
            Some("a:b\\c")
        );
        assert_eq!(
            lookup(t, "db.example", "5432", "x", "monitor").as_deref(),
            Some("any")
        );
        assert_eq!(lookup(t, "localhost", "5433", "app", "alice"), None);
    }
}
