//! A fresh PostgreSQL database per test, on the dev machine's server
//! (`SPB_TEST_PG` overrides `host=127.0.0.1 port=5432 user=postgres`).

pub fn server() -> String {
    std::env::var("SPB_TEST_PG").unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
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
        self.rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            c.query_one(sql, &[]).await.expect("query").get(0)
        })
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
