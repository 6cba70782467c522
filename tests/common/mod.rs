#![allow(dead_code)] // each test binary uses part of the harness
//! Shared harness of the real-cluster tests. Each test starts its own throwaway PostgreSQL cluster with activity_log
//! preloaded (`./dev start-cluster`, run as the `postgres` OS user), talks to it through psql
//! so that every statement really commits, and checks the exact rows of the trail.
//!
//! Needs: the extension installed into the system PostgreSQL (`./dev install`), sudo, and the
//! `postgres` OS user — `./dev test` arranges all three. `PG_BIN` points them at another
//! PostgreSQL 15 (a copy of Debian's, say, so that two clones can test side by side).

use std::process::{Child, Command, Output, Stdio};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The PostgreSQL whose binaries the tests run: `PG_BIN`, or Debian's PostgreSQL 15. The
/// extension must be installed into that same PostgreSQL (`PG_BIN=… ./dev install`).
pub static BIN: LazyLock<String> = LazyLock::new(|| {
    std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string())
});
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// repo_root is the directory holding ./dev: this crate's, or the workspace root for a member
/// (monitor/tests reuse this harness).
pub fn repo_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    match here.parent() {
        Some(parent) if !here.join("dev").exists() => parent.to_path_buf(),
        _ => here.to_path_buf(),
    }
}

pub struct Cluster {
    pub dir: String,
    pub port: u16,
}

impl Cluster {
    /// start creates and starts a cluster; `conf` lines are appended to postgresql.conf.
    pub fn start(name: &str, conf: &[&str]) -> Cluster {
        let port = 55000
            + (std::process::id() % 50) as u16 * 40
            + NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        // The process id keeps two clones' runs of the same test apart.
        let dir = format!("/tmp/al-test-{name}-{}", std::process::id());
        let status = Command::new("./dev")
            .args(["start-cluster", &dir, &port.to_string()])
            .args(conf)
            .current_dir(repo_root())
            .status()
            .expect("run ./dev start-cluster");
        assert!(status.success(), "could not start cluster {name}");
        Cluster { dir, port }
    }

    /// standby_of makes a streaming standby of this cluster with pg_basebackup (`-R`: its
    /// data directory gets standby.signal and the connection) and starts it.
    pub fn standby_of(&self, name: &str) -> Cluster {
        let standby = self.base_backup(name, "stream");
        assert!(standby.pg_ctl(&["start"]), "could not start standby {name}");
        standby
    }

    /// base_backup makes a standby of this cluster as standby_of does, with the WAL method
    /// `wal` (`-X stream`, or `none`: it needs the primary to start), and leaves it stopped.
    pub fn base_backup(&self, name: &str, wal: &str) -> Cluster {
        let port = 55000
            + (std::process::id() % 50) as u16 * 40
            + NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let dir = format!("/tmp/al-test-{name}-{}", std::process::id());
        let as_postgres = |args: &[&str]| {
            let ok = Command::new("sudo")
                .args(["-u", "postgres"])
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "{args:?} failed");
        };
        let _ = Command::new("sudo").args(["rm", "-rf", &dir]).status();
        as_postgres(&["mkdir", "-m", "700", &dir]);
        let data = format!("{dir}/data");
        let (basebackup, primary_port) = (format!("{}/pg_basebackup", *BIN), self.port.to_string());
        as_postgres(&[
            &basebackup,
            "-h",
            &self.dir,
            "-p",
            &primary_port,
            "-U",
            "postgres",
            "-D",
            &data,
            "-R",
            "-X",
            wal,
        ]);
        // The last setting of a name in postgresql.conf wins.
        as_postgres(&[
            "sh",
            "-c",
            &format!(
                "printf \"port = {port}\\nunix_socket_directories = '{dir}'\\n\" >> {data}/postgresql.conf"
            ),
        ]);
        Cluster { dir, port }
    }

    /// client is a PostgreSQL client program (pgbench, pg_dump …) connected to this cluster's
    /// socket as postgres; the database and the rest are the caller's.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new(format!("{}/{program}", *BIN));
        c.args([
            "-h",
            &self.dir,
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        c
    }

    pub fn psql_command(&self, db: &str) -> Command {
        self.psql_command_as("postgres", db)
    }

    pub fn psql_command_as(&self, user: &str, db: &str) -> Command {
        let mut c = Command::new(format!("{}/psql", *BIN));
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &self.dir,
        ])
        .args(["-p", &self.port.to_string(), "-U", user, "-d", db])
        .env_remove("PGOPTIONS");
        c
    }

    pub fn run(&self, db: &str, script: &str) -> Output {
        self.run_as("postgres", db, script)
    }

    /// run_as runs a script as another role (the test clusters trust local connections).
    pub fn run_as(&self, user: &str, db: &str, script: &str) -> Output {
        let mut child = self
            .psql_command_as(user, db)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// sql runs a script (each statement in its own transaction unless the script says
    /// otherwise) and returns its output rows; it panics on any error.
    pub fn sql(&self, db: &str, script: &str) -> Vec<String> {
        self.sql_as("postgres", db, script)
    }

    pub fn sql_as(&self, user: &str, db: &str, script: &str) -> Vec<String> {
        let out = self.run_as(user, db, script);
        assert!(
            out.status.success(),
            "psql as {user} failed on\n{script}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn one_as(&self, user: &str, db: &str, query: &str) -> String {
        let rows = self.sql_as(user, db, query);
        assert_eq!(rows.len(), 1, "expected one row from {query}, got {rows:?}");
        rows[0].clone()
    }

    pub fn error_as(&self, user: &str, db: &str, script: &str) -> String {
        let out = self.run_as(user, db, script);
        assert!(!out.status.success(), "expected an error from\n{script}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// one returns the single value a query produces.
    pub fn one(&self, db: &str, query: &str) -> String {
        self.one_as("postgres", db, query)
    }

    /// error runs a script that must fail and returns its stderr.
    pub fn error(&self, db: &str, script: &str) -> String {
        self.error_as("postgres", db, script)
    }

    /// spawn starts a psql session in the background (for blocking scenarios).
    pub fn spawn(&self, db: &str, appname: &str, script: &str) -> Child {
        self.psql_command(db)
            .args(["-c", script])
            .env("PGAPPNAME", appname)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql")
    }

    /// major is the server's major version: tests use the SQL a version adds (MERGE …
    /// RETURNING on 17, RETURNING OLD/NEW on 18) where the server has it.
    pub fn major(&self) -> u32 {
        let num = self.one("postgres", "SHOW server_version_num");
        num.parse::<u32>().expect("server_version_num is a number") / 10000
    }

    pub fn flush(&self, db: &str) {
        assert_eq!(
            self.one(db, "SELECT activity_log.flush('30 s')"),
            "t",
            "flush timed out in {db}"
        );
    }

    /// writer_pid is the pid of the database's writer; None while it has none, or while no
    /// ring is assigned to the database yet (right after CREATE EXTENSION on a busy machine).
    pub fn writer_pid(&self, db: &str) -> Option<i32> {
        let rows = self.sql(db, "SELECT coalesce(writer_pid, 0) FROM activity_log.queue WHERE database = current_database()");
        rows.first().map(|v| v.parse().unwrap()).filter(|&p| p != 0)
    }

    pub fn wait_for_writer(&self, db: &str, not: Option<i32>) -> i32 {
        let pid = wait_until(Duration::from_secs(30), || {
            self.writer_pid(db).filter(|&p| Some(p) != not)
        });
        pid.unwrap_or_else(|| {
            panic!(
                "no writer for {db}; rings: {:?}; workers: {:?}; log:\n{}",
                self.sql(db, "SELECT database, writer_state, writer_pid, writer_failures FROM activity_log.queue"),
                self.sql(db, "SELECT pid, backend_type, wait_event, xact_start FROM pg_stat_activity WHERE backend_type LIKE 'activity_log%'"),
                self.log()
            )
        })
    }

    pub fn pg_ctl(&self, args: &[&str]) -> bool {
        Command::new("sudo")
            .args([
                "-u",
                "postgres",
                &format!("{}/pg_ctl", *BIN),
                "-D",
                &format!("{}/data", self.dir),
            ])
            .args(["-l", &format!("{}/server.log", self.dir), "-w"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(format!("{}/server.log", self.dir)).unwrap_or_default()
    }

    /// crash_restarts counts the crash-restarts in the server log so far.
    pub fn crash_restarts(&self) -> usize {
        self.log()
            .matches("all server processes terminated; reinitializing")
            .count()
    }

    /// wait_for_crash_restart waits until the postmaster has reinitialized after a crash (one
    /// more than `before` in its log) and accepts connections again. A connection made before
    /// it noticed the crash would otherwise pass for the restarted server.
    pub fn wait_for_crash_restart(&self, before: usize) {
        let restarted = wait_until(Duration::from_secs(60), || {
            (self.crash_restarts() > before).then_some(())
        });
        assert!(
            restarted.is_some(),
            "no crash-restart; log:\n{}",
            self.log()
        );
        let up = wait_until(Duration::from_secs(60), || {
            self.psql_command("postgres")
                .args(["-Atc", "SELECT 1"])
                .output()
                .ok()
                .filter(|o| o.status.success())
        });
        assert!(up.is_some(), "the server did not come back");
    }

    /// lock_trail holds ACCESS EXCLUSIVE on activity_log.events from another session, so the
    /// writer blocks and records stay in the ring. Released by [`Cluster::unlock_trail`].
    pub fn lock_trail(&self, db: &str) -> Child {
        let child = self.spawn(
            db,
            "al_locker",
            "BEGIN; LOCK TABLE activity_log.events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(300); COMMIT;",
        );
        let granted = wait_until(Duration::from_secs(10), || {
            let n = self.one(
                db,
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                  WHERE a.application_name = 'al_locker' AND l.granted
                    AND l.relation = 'activity_log.events'::regclass AND l.mode = 'AccessExclusiveLock'",
            );
            (n == "1").then_some(())
        });
        assert!(granted.is_some(), "locker never got its lock");
        child
    }

    pub fn unlock_trail(&self, db: &str, mut locker: Child) {
        self.sql(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'al_locker'");
        let _ = locker.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
        if !std::thread::panicking() {
            let _ = Command::new("sudo").args(["rm", "-rf", &self.dir]).status();
        } else {
            eprintln!("--- server log of {} ---\n{}", self.dir, self.log());
        }
    }
}

pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if started.elapsed() > timeout {
            return None;
        }
        sleep(Duration::from_millis(100));
    }
}

/// with_extension creates `db` if it does not exist, installs the extension and waits for its writer.
pub fn with_extension(c: &Cluster, db: &str) {
    if c.one(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    ) == "0"
    {
        c.sql("postgres", &format!("CREATE DATABASE {db}"));
    }
    c.sql(db, "CREATE EXTENSION activity_log");
    c.wait_for_writer(db, None);
}

/*---- staged frames (durable_queue rows), edited as a superuser who knows the format can ----*/

/// CRC-32C, bit by bit: what a superuser who re-seals an edited staged frame computes.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// reseal edits the frame of the durable_queue row in `db` of transaction `xid` (staged in one row)
/// with `edit` and seals it again, as a superuser who knows the format can; returns the row's
/// new bytes in hex. (A frame without a seal is edited as it is.)
pub fn reseal(c: &Cluster, db: &str, xid: &str, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let row = c.one(
        db,
        &format!(
            "SELECT encode(frame, 'hex') || '|' || records || '|' || ((extract(epoch FROM staged_at) * 1000000)::int8 - 946684800000000)
               FROM activity_log.durable_queue WHERE xid = '{xid}'"
        ),
    );
    let row: Vec<&str> = row.split('|').collect();
    let mut frame = unhex(row[0]);
    let sealed = frame.ends_with(&unhex("31534c41"));
    if sealed {
        frame.truncate(frame.len() - 12);
    }
    edit(&mut frame);
    if sealed {
        let mut covered = frame.clone();
        covered.extend_from_slice(&xid.parse::<u64>().unwrap().to_le_bytes());
        covered.extend_from_slice(&(-1i64).to_le_bytes());
        covered.extend_from_slice(&row[1].parse::<u32>().unwrap().to_le_bytes());
        covered.extend_from_slice(&row[2].parse::<i64>().unwrap().to_le_bytes());
        let len = frame.len() as u32;
        frame.extend_from_slice(&crc32c(&covered).to_le_bytes());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&unhex("31534c41"));
    }
    let bytes = hex(&frame);
    c.sql(
        db,
        &format!("UPDATE activity_log.durable_queue SET frame = decode('{bytes}', 'hex') WHERE xid = '{xid}'"),
    );
    bytes
}
