//! A fresh PostgreSQL database per test, on the dev machine's server
//! (`SPB_TEST_PG` overrides `host=127.0.0.1 port=5432 user=postgres`;
//! `SPB_TEST_PG=private` forces a private server). Where
//! that server does not let `postgres` in without a password (a fresh Debian
//! install asks for one on TCP), the tests start a private server once per
//! test binary instead, and stop it when the binary exits.

use std::sync::OnceLock;

const MACHINE: &str = "host=127.0.0.1 port=5432 user=postgres";

static PRIVATE: OnceLock<Option<PrivatePg>> = OnceLock::new();

extern "C" fn stop_private_server() {
    if let Some(Some(pg)) = PRIVATE.get() {
        pg.stop_hard();
    }
}

fn machine_server_lets_us_in() -> bool {
    // On a thread of its own: callers may be inside a runtime.
    std::thread::spawn(|| {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                tokio_postgres::connect(&format!("{MACHINE} dbname=postgres"), tokio_postgres::NoTls),
            )
            .await
            .is_ok_and(|r| r.is_ok())
        })
    })
    .join()
    .unwrap_or(false)
}

pub fn server() -> String {
    let forced = std::env::var("SPB_TEST_PG").ok();
    if let Some(s) = forced.as_deref().filter(|s| *s != "private") {
        return s.to_string();
    }
    let private = PRIVATE.get_or_init(|| {
        if forced.is_none() && machine_server_lets_us_in() {
            return None;
        }
        eprintln!(
            "PostgreSQL on 127.0.0.1:5432 does not accept user postgres without a password: using a private server"
        );
        let pg = PrivatePg::start();
        // SAFETY: registers a plain function to run at process exit.
        unsafe { libc::atexit(stop_private_server) };
        Some(pg)
    });
    match private {
        Some(pg) => format!("host=127.0.0.1 port={} user=postgres", pg.port),
        None => MACHINE.to_string(),
    }
}

/// The first column of the one row `sql` returns on the database at `url`.
fn query_one<T: for<'a> tokio_postgres::types::FromSql<'a>>(rt: &tokio::runtime::Runtime, url: &str, sql: &str) -> T {
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        c.query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .get(0)
    })
}

fn query_i64(rt: &tokio::runtime::Runtime, url: &str, sql: &str) -> i64 {
    query_one(rt, url, sql)
}

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub name: String,
    pub rt: tokio::runtime::Runtime,
}

impl TestDb {
    pub fn new(tag: &str) -> TestDb {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let name = format!("spb_test_{tag}_{}", std::process::id());
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&format!("{} dbname=postgres", server()), tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL runs on 127.0.0.1:5432 (see README)");
            tokio::spawn(conn);
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .expect("drop a leftover test database");
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create the test database");
        });
        TestDb { name, rt }
    }

    pub fn url(&self) -> String {
        format!("{} dbname={}", server(), self.name)
    }

    pub fn query_i64(&self, sql: &str) -> i64 {
        query_i64(&self.rt, &self.url(), sql)
    }

    /// One text value (e.g. a `string_agg` of a whole table, to compare tables).
    pub fn query_text(&self, sql: &str) -> String {
        query_one::<Option<String>>(&self.rt, &self.url(), sql).unwrap_or_default()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        self.rt.block_on(async {
            if let Ok((c, conn)) =
                tokio_postgres::connect(&format!("{} dbname=postgres", server()), tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                let _ = c
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        });
    }
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory,
/// on a free loopback port), which the test may stop and start: the shared
/// server must never be stopped. As root, the server runs as `postgres`
/// (initdb refuses root). `SPB_PG_BIN` overrides the binaries' directory.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: std::path::PathBuf,
    /// More server options (`-c …`), for every start.
    extra: String,
}

fn pg_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SPB_PG_BIN") {
        return p.into();
    }
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries under /usr/lib/postgresql (apt-get install postgresql)")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl PrivatePg {
    pub fn start() -> PrivatePg {
        let pg = Self::init();
        pg.start_again();
        pg
    }

    /// A server that speaks TLS only, with the test PKI's server
    /// certificate (localhost, 127.0.0.1), on 127.0.0.1 and 127.0.0.2, and
    /// asks every client for a certificate the PKI's CA signed
    /// (`clientcert=verify-ca`); a connection without TLS is refused.
    pub fn start_tls(pki: &super::Pki) -> PrivatePg {
        use std::os::unix::fs::PermissionsExt;
        let mut pg = Self::init();
        let data = pg.dir.path().join("data");
        for (from, to) in [
            ("server.pem", "server.crt"),
            ("server.key", "server.key"),
            ("ca.pem", "root.crt"),
        ] {
            std::fs::copy(pki.path(from), data.join(to)).expect("copy a certificate");
            std::fs::set_permissions(data.join(to), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n\
             hostssl all all 127.0.0.2/32 trust clientcert=verify-ca\n\
             hostnossl all all 0.0.0.0/0 reject\n",
        )
        .expect("pg_hba.conf");
        if is_root() {
            let _ = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status();
        }
        pg.extra = "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=root.crt \
                    -c listen_addresses=127.0.0.1,127.0.0.2"
            .into();
        pg.start_again();
        pg
    }

    fn init() -> PrivatePg {
        let dir = tempfile::tempdir().expect("tmp");
        let pg = PrivatePg {
            port: super::free_port(),
            bin: pg_bin(),
            dir,
            extra: String::new(),
        };
        if is_root() {
            let _ = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status();
        }
        let data = pg.dir.path().join("data");
        let ok = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("initdb");
        assert!(ok.success(), "initdb failed");
        pg
    }

    fn command(&self, tool: &str) -> std::process::Command {
        let exe = self.bin.join(tool);
        if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        }
    }

    /// Starts (again) on the same port and data.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        let ok = self
            .command("pg_ctl")
            .args(["-w", "-t", "30", "-o", &opts, "-l"])
            .arg(self.dir.path().join("server.log"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("start")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(ok.success(), "pg_ctl start failed");
    }

    /// Stops at once, as a crash would (`-m immediate`).
    pub fn stop_hard(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .stdout(std::process::Stdio::null())
            .status();
    }

    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    pub fn query_i64(&self, sql: &str) -> i64 {
        query_i64(&tokio::runtime::Runtime::new().expect("runtime"), &self.url(), sql)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.stop_hard();
    }
}

/// A login of the test's own in `role`, dropped when the test ends.
pub struct Login<'a> {
    db: &'a TestDb,
    name: String,
}

impl<'a> Login<'a> {
    pub fn new(db: &'a TestDb, role: &str) -> Login<'a> {
        let name = format!("spb_test_{role}_{}", std::process::id());
        db.rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            c.batch_execute(&format!(
                "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN IN ROLE {role}"
            ))
            .await
            .expect("a login in the role");
        });
        Login { db, name }
    }

    /// The test database's URL as this login (a later key wins).
    pub fn url(&self) -> String {
        format!("{} user={}", self.db.url(), self.name)
    }
}

impl Drop for Login<'_> {
    fn drop(&mut self) {
        let name = self.name.clone();
        let url = self.db.url();
        self.db.rt.block_on(async move {
            if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS {name}")).await;
            }
        });
    }
}
