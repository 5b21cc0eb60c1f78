//! Build script: the SQL Server tests run only where a server is named by
//! `SPB_TEST_MSSQL_URL` (cfg `spb_mssql`); elsewhere they show as ignored.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spb_mssql)");
    println!("cargo::rerun-if-env-changed=SPB_TEST_MSSQL_URL");
    if std::env::var_os("SPB_TEST_MSSQL_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=spb_mssql");
    }
}
