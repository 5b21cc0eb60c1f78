//! A subscriber that counts the live and historical metrics of every DDATA
//! of one group (for the store-and-forward benchmarks), and the size of a
//! directory tree on disk.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

#[derive(Default)]
pub struct Counts {
    pub live: AtomicU64,
    pub historical: AtomicU64,
}

/// Subscribes to `spBv1.0/<group>/#` on 127.0.0.1:`port` and counts, for
/// ever; reconnects when the broker goes (it comes back on the same port).
pub async fn count(port: u16, group: &str, counts: Arc<Counts>) {
    loop {
        let mut o = rumqttc::MqttOptions::new(format!("bench-count-{port}"), "127.0.0.1", port);
        o.set_max_packet_size(64 << 20, 64 << 20);
        o.set_clean_session(true);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
        let _ = client
            .subscribe(format!("spBv1.0/{group}/#"), rumqttc::QoS::AtMostOnce)
            .await;
        while let Ok(ev) = el.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                if !p.topic.contains("/DDATA/") {
                    continue;
                }
                if let Ok(raw) = spb::sparkplug::pb::Payload::decode(p.payload) {
                    let h = raw.metrics.iter().filter(|m| m.is_historical == Some(true)).count() as u64;
                    counts.historical.fetch_add(h, Relaxed);
                    counts.live.fetch_add(raw.metrics.len() as u64 - h, Relaxed);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bytes of the files below `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
