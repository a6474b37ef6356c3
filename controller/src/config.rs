//! The controller's configuration (plain data) and the address logic around it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Everything `start` needs besides its listeners.
#[derive(Debug, Clone, Serialize)]
pub struct ControllerConfig {
    /// Holds the database, the CA and the admin token.
    pub data_dir: PathBuf,
    /// Gateway addresses written into join tokens (host:port). Empty: derived from the
    /// gateway's bound address and this machine's interfaces.
    pub advertise: Vec<String>,
    /// How often the controller pings each agent; a link silent for three intervals is dead.
    #[serde(with = "millis")]
    pub heartbeat_interval: Duration,
    /// Where the controller sends Wake-on-LAN packets when no peer agent can.
    pub wol_target: std::net::SocketAddr,
    /// Runtime image for recipes inferred from a model's config.json ("vllm-node" is the tag
    /// spark-vllm-docker builds).
    pub default_runtime_image: String,
    /// How long a gateway request for an on-demand model that is not loaded waits for it
    /// before answering 503 + Retry-After.
    #[serde(with = "millis")]
    pub on_demand_wait: Duration,
    /// How often every configured service is asked for its health and what it serves.
    #[serde(with = "millis")]
    pub discovery_interval: Duration,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

impl ControllerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ControllerConfig {
            data_dir: data_dir.into(),
            advertise: Vec::new(),
            heartbeat_interval: Duration::from_secs(2),
            wol_target: std::net::SocketAddr::from(([255, 255, 255, 255], 9)),
            default_runtime_image: "vllm-node".into(),
            on_demand_wait: Duration::from_secs(120),
            discovery_interval: Duration::from_secs(5),
        }
    }
}

/// Interface names that are container or VM plumbing, not the box's own network.
fn is_virtual_iface(name: &str) -> bool {
    [
        "lo", "docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "vnet", "tap",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// This machine's IPv4 addresses a peer on the LAN (or WireGuard) could dial, physical first.
pub fn local_ipv4s() -> Vec<Ipv4Addr> {
    let Ok(networks) = sysinfo::Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut names: Vec<_> = networks
        .iter()
        .map(|(n, d)| (n.to_string_lossy().into_owned(), d))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (name, data) in names {
        if is_virtual_iface(&name) {
            continue;
        }
        for net in data.ip_networks() {
            if let IpAddr::V4(v4) = net.addr
                && !v4.is_loopback()
                && !v4.is_link_local()
                && !v4.is_unspecified()
                && !out.contains(&v4)
            {
                out.push(v4);
            }
        }
    }
    out
}

/// Gateway addresses for join tokens, given where the gateway is bound.
pub fn default_advertise(bound: SocketAddr) -> Vec<String> {
    let port = bound.port();
    if !bound.ip().is_unspecified() {
        return vec![fmt_host_port(bound.ip(), port)];
    }
    let mut out: Vec<String> = local_ipv4s()
        .into_iter()
        .map(|ip| fmt_host_port(IpAddr::V4(ip), port))
        .collect();
    out.push(fmt_host_port(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    out
}

/// `host:port`, with brackets for IPv6.
pub fn fmt_host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The names the gateway certificate must cover: every advertised host, loopback and this
/// machine's own names.
pub fn server_names(gateways: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_string()];
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if let Some(h) = sysinfo::System::host_name().ok().filter(|h| !h.is_empty()) {
        dns.push(format!("{h}.local"));
        dns.push(h);
    }
    for ip in local_ipv4s() {
        ips.push(IpAddr::V4(ip));
    }
    for g in gateways {
        let host = spark_common::token::host_of(g);
        match host.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(host.to_string()),
        }
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    (dns, ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_follows_the_bind_address() {
        let bound: SocketAddr = "127.0.0.1:9443".parse().unwrap();
        assert_eq!(default_advertise(bound), vec!["127.0.0.1:9443"]);
        let any: SocketAddr = "0.0.0.0:9443".parse().unwrap();
        let all = default_advertise(any);
        assert_eq!(all.last().map(String::as_str), Some("127.0.0.1:9443"));
        assert!(
            all.iter().all(|a| spark_common::token::is_host_port(a)),
            "{all:?}"
        );
        let v6: SocketAddr = "[::1]:9443".parse().unwrap();
        assert_eq!(default_advertise(v6), vec!["[::1]:9443"]);
    }

    #[test]
    fn certificate_names_cover_advertised_hosts() {
        let (dns, ips) = server_names(&["spark.example:9443".into(), "10.1.2.3:9443".into()]);
        assert!(dns.contains(&"spark.example".to_string()));
        assert!(dns.contains(&"localhost".to_string()));
        assert!(ips.contains(&"10.1.2.3".parse().unwrap()));
        assert!(ips.contains(&"127.0.0.1".parse().unwrap()));
    }
}
