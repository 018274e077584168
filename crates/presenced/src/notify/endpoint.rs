//! Webhook endpoint policy: which `notificationUrl`s we accept and which addresses we will connect to.
//!
//! A subscription makes the server POST to a URL of the caller's choosing, which is a textbook
//! server-side request forgery (SSRF) vector: without a guard, anyone holding a `Presence.Read.All` token
//! could make presenced talk to `127.0.0.1`, the cloud metadata service or the private network behind it.
//! Two layers defend against that:
//!
//! - [`EndpointPolicy::check_url`] runs when a subscription is created or its URL changes: syntax, scheme,
//!   no credentials, and — when the host is an IP literal — the address rules below.
//! - [`EndpointPolicy::check_ip`] is what the webhook client's DNS resolver (see `notify::webhook`) applies
//!   to every address a hostname resolves to, at connect time. Checking the addresses actually used for
//!   the connection, rather than a separate lookup at subscription time, is what defeats DNS rebinding.
//!
//! Everything that is not a publicly routable unicast address is forbidden unless the operator lists it in
//! [`EndpointPolicy::allowed_networks`] (`--webhook-allow-network`), e.g. `127.0.0.0/8` for local testing.
//! Cloud metadata addresses are stricter still: only an allowance naming exactly that address (a `/32` or
//! `/128`) permits them, so that allowing a whole link-local or ULA range for a legitimate receiver does not
//! also expose the instance's credentials. An allowance may name ports (`10.0.0.0/8:8443`), and then
//! admits only URLs on them: the webhook client keeps one resolver per set of allowances a port
//! admits, so the port and the address connected to are judged together.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use ipnet::IpNet;

/// Longest URL accepted. Graph documents no limit; 2048 is the conventional practical URL limit and keeps
/// stored subscriptions small.
pub const MAX_URL_LEN: usize = 2048;

/// Which webhook URLs and target addresses are acceptable. The default is the safe one: https only, and
/// public unicast addresses only.
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicy {
    /// Accept `http://` URLs (`--webhook-allow-http`). Meant for local development and tests only.
    pub allow_http: bool,
    /// Networks exempt from the address rules on any port (`--webhook-allow-network`, read by
    /// [`parse_allowance`]).
    pub allowed_networks: Vec<IpNet>,
    /// Networks exempt from the address rules only for URLs on these ports.
    pub allowed_on_ports: Vec<(IpNet, RangeInclusive<u16>)>,
}

/// Why a `--webhook-allow-network` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("'{0}' is not a network (expected e.g. 10.0.0.0/8, fd00::/8 or a single address)")]
    Syntax(String),
    #[error("'{0}' is not a port or port range (expected e.g. 8443 or 8000-8999)")]
    Ports(String),
    #[error("{given} has host bits set; did you mean {suggested}?")]
    HostBitsSet { given: IpNet, suggested: IpNet },
}

/// A `--webhook-allow-network` value: a network in CIDR notation (`127.0.0.0/8`, `fd00::/8`) or a
/// single address (`10.1.2.3`, meaning `/32`). Host bits below the prefix are refused rather than
/// silently masked: `10.1.2.3/8` is far more likely a typo than a request for all of `10.0.0.0/8`.
/// A `--webhook-allow-network` value: a network as [`parse_network`] reads it, optionally followed
/// by `:PORT` or `:FIRST-LAST` (`10.0.0.0/8:8443`, `10.1.2.3:8000-8999`, `[fd00::1]:443`,
/// `fd00::/8:443`). A bare IPv6 address takes its port only in brackets.
pub fn parse_allowance(text: &str) -> Result<(IpNet, Option<RangeInclusive<u16>>), NetworkError> {
    let text = text.trim();
    let (network, ports) = if let Some(rest) = text.strip_prefix('[') {
        let (address, after) = rest
            .split_once(']')
            .ok_or_else(|| NetworkError::Syntax(text.to_owned()))?;
        match after {
            "" => (address, None),
            _ => (
                address,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| NetworkError::Syntax(text.to_owned()))?,
                ),
            ),
        }
    } else if let Some((address, prefix)) = text.split_once('/') {
        match prefix.split_once(':') {
            Some((len, ports)) => (&text[..address.len() + 1 + len.len()], Some(ports)),
            None => (text, None),
        }
    } else if text.matches(':').count() == 1 {
        let (address, ports) = text.split_once(':').unwrap_or((text, ""));
        (address, Some(ports))
    } else {
        (text, None)
    };
    let network = parse_network(network)?;
    let ports = ports.map(parse_ports).transpose()?;
    Ok((network, ports))
}

fn parse_ports(text: &str) -> Result<RangeInclusive<u16>, NetworkError> {
    let bad = || NetworkError::Ports(text.to_owned());
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(text)?, port(text)?),
    };
    if first > last {
        return Err(bad());
    }
    Ok(first..=last)
}

pub fn parse_network(text: &str) -> Result<IpNet, NetworkError> {
    let text = text.trim();
    let network = match text.parse::<IpAddr>() {
        Ok(ip) => IpNet::from(ip),
        Err(_) => text
            .parse::<IpNet>()
            .map_err(|_| NetworkError::Syntax(text.to_owned()))?,
    };
    if network.trunc() != network {
        return Err(NetworkError::HostBitsSet {
            given: network,
            suggested: network.trunc(),
        });
    }
    Ok(network)
}

/// Why an address is not an acceptable webhook target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    Private,
    LinkLocal,
    /// `0.0.0.0/8` and `::`; connecting to `0.0.0.0` reaches the local host on most systems.
    Unspecified,
    /// Carrier-grade NAT shared space, `100.64.0.0/10` (also home to some cloud metadata services).
    SharedAddressSpace,
    Multicast,
    Broadcast,
    Reserved,
    Documentation,
    Benchmarking,
    /// Cloud instance metadata services (169.254.169.254, fd00:ec2::254, Azure's 168.63.129.16).
    CloudMetadata,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::LinkLocal => "a link-local address",
            Self::Unspecified => "an unspecified ('this host') address",
            Self::SharedAddressSpace => "a carrier-grade NAT (shared) address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Reserved => "a reserved address",
            Self::Documentation => "a documentation address",
            Self::Benchmarking => "a benchmarking address",
            Self::CloudMetadata => "a cloud instance metadata address",
        }
    }
}

/// Why a webhook URL or address was refused. The messages are written for the API caller (they become the
/// body of a 400 on subscription create/update) and for the operator (the flag that would allow it).
///
/// [`Display`](fmt::Display) calls the URL "the webhook URL"; [`EndpointError::for_field`] names the field
/// instead, e.g. "notificationUrl must use https (...)".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Longer than [`MAX_URL_LEN`] bytes.
    TooLong {
        len: usize,
    },
    /// Contains whitespace or control characters, which the URL parser would silently strip or trim — the
    /// caller must see exactly the URL we will call.
    BadCharacters,
    /// Not a URL at all, or a relative one.
    NotAbsolute {
        reason: String,
    },
    /// `http` while the policy requires https.
    HttpNotAllowed,
    /// Neither http nor https.
    UnsupportedScheme {
        scheme: String,
    },
    /// `user:pass@` in the authority: credentials in URLs leak into logs, and Graph never sends them.
    UserInfo,
    MissingHost,
    /// A `#fragment` is never sent over HTTP, so it can only be a mistake.
    Fragment,
    /// The host is, or resolved to, an address the policy forbids. `embedded` is the IPv4 address inside an
    /// IPv4-mapped/compatible, NAT64 or 6to4 IPv6 address when that is what made it forbidden.
    ForbiddenAddress {
        ip: IpAddr,
        embedded: Option<Ipv4Addr>,
        class: AddressClass,
    },
}

impl EndpointError {
    /// The error with the URL named by its field, e.g. `err.for_field("notificationUrl").to_string()`.
    pub fn for_field<'a>(&'a self, field: &'a str) -> impl fmt::Display + 'a {
        ForField {
            error: self,
            subject: field,
        }
    }

    fn render(&self, subject: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { len } => write!(f, "{subject} is {len} characters long; the limit is {MAX_URL_LEN}"),
            Self::BadCharacters => write!(f, "{subject} must not contain whitespace or control characters"),
            Self::NotAbsolute { reason } => write!(f, "{subject} must be an absolute https URL ({reason})"),
            Self::HttpNotAllowed => write!(
                f,
                "{subject} must use https (start the server with --webhook-allow-http to allow http)"
            ),
            Self::UnsupportedScheme { scheme } => write!(f, "{subject} must use https, not '{scheme}'"),
            Self::UserInfo => write!(f, "{subject} must not contain a user name or password"),
            Self::MissingHost => write!(f, "{subject} must name a host"),
            Self::Fragment => write!(f, "{subject} must not contain a #fragment"),
            Self::ForbiddenAddress { ip, embedded, class } => {
                write!(f, "{subject} resolves to {ip}")?;
                if let Some(v4) = embedded {
                    write!(f, " (which embeds {v4})")?;
                }
                write!(f, ", {}", class.describe())?;
                if *class == AddressClass::CloudMetadata {
                    let exact = IpNet::from(embedded.map_or(*ip, IpAddr::V4));
                    write!(
                        f,
                        "; webhooks must not target it (only --webhook-allow-network {exact} would allow it)"
                    )
                } else {
                    write!(f, "; allow it with --webhook-allow-network")
                }
            }
        }
    }
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render("the webhook URL", f)
    }
}

struct ForField<'a> {
    error: &'a EndpointError,
    subject: &'a str,
}

impl fmt::Display for ForField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.render(self.subject, f)
    }
}

impl EndpointPolicy {
    /// The policy for URLs on `port`: the port-limited allowances that admit it join the others.
    pub fn for_port(&self, port: u16) -> EndpointPolicy {
        let mut allowed_networks = self.allowed_networks.clone();
        allowed_networks.extend(
            self.allowed_on_ports
                .iter()
                .filter(|(_, ports)| ports.contains(&port))
                .map(|(net, _)| *net),
        );
        EndpointPolicy {
            allow_http: self.allow_http,
            allowed_networks,
            allowed_on_ports: Vec::new(),
        }
    }

    /// Which port-limited allowances admit `port`: URLs whose ports give the same answer share a
    /// webhook client (and its resolver).
    pub fn port_class(&self, port: u16) -> Vec<bool> {
        self.allowed_on_ports.iter().map(|(_, p)| p.contains(&port)).collect()
    }

    /// Static checks on a `notificationUrl` / `lifecycleNotificationUrl` at subscription time: an absolute URL
    /// of at most [`MAX_URL_LEN`] bytes, scheme https (or http when [`allow_http`](Self::allow_http)), no
    /// userinfo, a host, no fragment; an IP-literal host must pass [`check_ip`](Self::check_ip). Hostnames are
    /// not resolved here: their addresses are checked at connect time by the webhook client's resolver.
    pub fn check_url(&self, raw: &str) -> Result<reqwest::Url, EndpointError> {
        if raw.len() > MAX_URL_LEN {
            return Err(EndpointError::TooLong { len: raw.len() });
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EndpointError::BadCharacters);
        }
        let url = reqwest::Url::parse(raw).map_err(|e| EndpointError::NotAbsolute { reason: e.to_string() })?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(EndpointError::HttpNotAllowed),
            other => {
                return Err(EndpointError::UnsupportedScheme {
                    scheme: other.to_owned(),
                })
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EndpointError::UserInfo);
        }
        if url.fragment().is_some() {
            return Err(EndpointError::Fragment);
        }
        // The URL parser has already normalised numeric hosts ("2130706433", "0x7f.1", "127.1") to Ipv4, so
        // those tricks end up here as literals rather than slipping through as domain names.
        let host = url.host_str().ok_or(EndpointError::MissingHost)?;
        if host.is_empty() {
            return Err(EndpointError::MissingHost);
        }
        // IPv6 literals come back bracketed; a domain name never parses as an address.
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            let port = url.port_or_known_default().unwrap_or(443);
            self.for_port(port).check_ip(ip)?;
        }
        Ok(url)
    }

    /// Whether `ip` is an acceptable webhook target: publicly routable unicast, or inside
    /// [`allowed_networks`](Self::allowed_networks). IPv6 forms that embed an IPv4 address (mapped,
    /// compatible, NAT64 `64:ff9b::/96`, 6to4) are judged by the embedded address, so `::ffff:127.0.0.1` is
    /// loopback. Cloud metadata addresses are only allowed by an allowance naming exactly that address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), EndpointError> {
        let Some((class, embedded)) = classify(ip) else {
            return Ok(());
        };
        // The embedded IPv4 address is the real destination, so an allowance for it counts too: allowing
        // 127.0.0.0/8 also allows ::ffff:127.0.0.1.
        let candidates = [Some(ip), embedded.map(IpAddr::V4)];
        // Families never match each other (ipnet's `contains`): an IPv4 destination embedded in
        // an IPv6 form is one of the candidates, so an IPv4 allowance still covers it.
        let allowed = self.allowed_networks.iter().any(|net| {
            (class != AddressClass::CloudMetadata || net.prefix_len() == net.max_prefix_len())
                && candidates.iter().flatten().any(|c| net.contains(c))
        });
        if allowed {
            Ok(())
        } else {
            Err(EndpointError::ForbiddenAddress { ip, embedded, class })
        }
    }
}

/// `None` for a public unicast address; otherwise why it is forbidden and, for IPv6 forms embedding an
/// IPv4 address, that address.
fn classify(ip: IpAddr) -> Option<(AddressClass, Option<Ipv4Addr>)> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(|c| (c, None)),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix_len: u32) -> bool {
    let m = u32::MAX.checked_shl(32 - prefix_len).unwrap_or(0);
    u32::from(ip) & m == u32::from(Ipv4Addr::from(net)) & m
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix_len: u32) -> bool {
    let m = u128::MAX.checked_shl(128 - prefix_len).unwrap_or(0);
    let [a, b, c, d, e, f, g, h] = net;
    u128::from(ip) & m == u128::from(Ipv6Addr::new(a, b, c, d, e, f, g, h)) & m
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    // Most specific entries first, so that 169.254.169.254 is reported as metadata rather than link-local and
    // 255.255.255.255 as broadcast rather than reserved.
    const TABLE: &[([u8; 4], u32, AddressClass)] = &[
        ([169, 254, 169, 254], 32, CloudMetadata), // AWS, GCP, Azure IMDS, OpenStack, ...
        ([168, 63, 129, 16], 32, CloudMetadata),   // Azure WireServer: public-looking, but a platform endpoint
        ([255, 255, 255, 255], 32, Broadcast),
        ([0, 0, 0, 0], 8, Unspecified),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, SharedAddressSpace), // includes Alibaba Cloud's metadata at 100.100.100.200
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, Reserved), // IETF protocol assignments (includes Oracle's 192.0.0.192 metadata)
        ([192, 0, 2, 0], 24, Documentation),
        ([192, 88, 99, 0], 24, Reserved), // former 6to4 relay anycast
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Benchmarking),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    TABLE
        .iter()
        .find(|(net, len, _)| in_v4(ip, *net, *len))
        .map(|&(_, _, class)| class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<(AddressClass, Option<Ipv4Addr>)> {
    use AddressClass::*;
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        return Some((Unspecified, None));
    }
    if ip.is_loopback() {
        return Some((Loopback, None));
    }
    // AWS IMDS over IPv6. It is inside fc00::/7 anyway, but is named (and held to the exact-allowance rule).
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254) {
        return Some((CloudMetadata, None));
    }
    // Forms that carry an IPv4 destination. The OS or a translator turns these into IPv4 traffic, so the
    // IPv4 address decides; a public embedded address makes the whole address acceptable.
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let embedded = if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96) // IPv4-mapped ::ffff:a.b.c.d
        || in_v6(ip, [0, 0, 0, 0, 0xffff, 0, 0, 0], 96) // IPv4-translated ::ffff:0:a.b.c.d (SIIT)
        || in_v6(ip, [0, 0, 0, 0, 0, 0, 0, 0], 96) // IPv4-compatible ::a.b.c.d (deprecated)
        || in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96)
    // NAT64 well-known prefix
    {
        Some(low32)
    } else if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        // 6to4: 2002:AABB:CCDD::/48 carries A.B.C.D in bits 16..48.
        Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32))
    } else {
        None
    };
    if let Some(v4) = embedded {
        return classify_v4(v4).map(|class| (class, Some(v4)));
    }
    const TABLE: &[([u16; 8], u32, AddressClass)] = &[
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, Private), // local-use NAT64 (RFC 8215): a private translator
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, Reserved),    // discard-only
        ([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48, Benchmarking),
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, Documentation),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, Reserved), // IETF protocol assignments, incl. Teredo 2001::/32
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, Documentation),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, Private), // unique local
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, LinkLocal),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, Private), // deprecated site-local
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, Multicast),
    ];
    if let Some(&(_, _, class)) = TABLE.iter().find(|(net, len, _)| in_v6(ip, *net, *len)) {
        return Some((class, None));
    }
    // Only 2000::/3 is allocated for global unicast; everything else is unassigned or special-purpose.
    if !in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return Some((Reserved, None));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> IpNet {
        parse_network(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn allowances_may_name_ports() {
        let parse = |s: &str| parse_allowance(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(parse("10.0.0.0/8"), (cidr("10.0.0.0/8"), None));
        assert_eq!(parse("10.0.0.0/8:8443"), (cidr("10.0.0.0/8"), Some(8443..=8443)));
        assert_eq!(parse("10.1.2.3:8000-8999"), (cidr("10.1.2.3"), Some(8000..=8999)));
        assert_eq!(parse("fd00::/8:443"), (cidr("fd00::/8"), Some(443..=443)));
        assert_eq!(parse("[fd00::1]:443"), (cidr("fd00::1"), Some(443..=443)));
        assert_eq!(parse("::1"), (cidr("::1"), None));
        for bad in [
            "10.0.0.0/8:",
            "10.0.0.0/8:0",
            "10.0.0.0/8:9-1",
            "10.0.0.0/8:x",
            "10.0.0.1:70000",
        ] {
            assert!(matches!(parse_allowance(bad), Err(NetworkError::Ports(_))), "{bad}");
        }
        assert!(parse_allowance("[fd00::1]443").is_err());

        // Only URLs on an admitted port may reach the network.
        let (net, ports) = parse("127.0.0.0/8:8443");
        let policy = EndpointPolicy {
            allow_http: true,
            allowed_networks: vec![],
            allowed_on_ports: vec![(net, ports.unwrap())],
        };
        assert!(policy.check_url("https://127.0.0.1:8443/hook").is_ok());
        assert!(matches!(
            policy.check_url("https://127.0.0.1:9000/hook"),
            Err(EndpointError::ForbiddenAddress { .. })
        ));
        assert!(policy.check_url("https://127.0.0.1/hook").is_err());
        assert_eq!(policy.port_class(8443), vec![true]);
        assert_eq!(policy.port_class(443), vec![false]);
        assert!(policy.for_port(8443).check_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.for_port(443).check_ip("127.0.0.1".parse().unwrap()).is_err());
    }

    fn loopback_allowed() -> EndpointPolicy {
        EndpointPolicy {
            allow_http: false,
            allowed_networks: vec![cidr("127.0.0.0/8")],
            allowed_on_ports: vec![],
        }
    }

    #[test]
    fn check_url_table() {
        let strict = EndpointPolicy::default();
        let http = EndpointPolicy {
            allow_http: true,
            allowed_networks: vec![],
            allowed_on_ports: vec![],
        };
        let lb = loopback_allowed();
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        let just_fits = format!(
            "https://example.com/{}",
            "a".repeat(MAX_URL_LEN - "https://example.com/".len())
        );
        // (policy, url, expected Ok?)
        let cases: Vec<(&EndpointPolicy, &str, bool)> = vec![
            (&strict, "https://webhook.contoso.com/api", true),
            (&strict, "https://webhook.contoso.com:8443/api?tenant=a&x=%20y", true),
            (&strict, "HTTPS://Webhook.Contoso.com/api", true),
            (&strict, "https://8.8.8.8/hook", true),
            (&strict, "https://[2606:4700:4700::1111]/hook", true),
            (&strict, "https://[::ffff:8.8.8.8]/hook", true),
            (&strict, "http://webhook.contoso.com/api", false),
            (&http, "http://webhook.contoso.com/api", true),
            (&http, "ftp://webhook.contoso.com/api", false),
            (&strict, "https://user:pass@webhook.contoso.com/api", false),
            (&strict, "https://user@webhook.contoso.com/api", false),
            (&strict, "https://:pass@webhook.contoso.com/api", false),
            (&strict, "/api/notify", false),
            (&strict, "webhook.contoso.com/api", false),
            (&strict, "", false),
            (&strict, "not a url", false),
            (&strict, "https://", false),
            (&strict, "https://webhook.contoso.com/api#frag", false),
            (&strict, "https://webhook.contoso.com/api\n", false),
            (&strict, " https://webhook.contoso.com/api", false),
            (&strict, &long, false),
            (&strict, &just_fits, true),
            (&strict, "https://127.0.0.1/hook", false),
            (&strict, "https://127.9.9.9:8443/hook", false),
            (&strict, "https://2130706433/hook", false), // decimal 127.0.0.1
            (&strict, "https://0x7f.1/hook", false),
            (&strict, "https://[::1]/hook", false),
            (&strict, "https://[::ffff:10.0.0.1]/hook", false),
            (&strict, "https://[::ffff:127.0.0.1]/hook", false),
            (&strict, "https://[64:ff9b::a9fe:a9fe]/hook", false), // NAT64 of 169.254.169.254
            (&strict, "https://[2002:c0a8:0101::1]/hook", false),  // 6to4 of 192.168.1.1
            (&strict, "https://169.254.169.254/latest/meta-data/", false),
            (&strict, "https://100.64.0.1/hook", false),
            (&strict, "https://0.0.0.0/hook", false),
            (&strict, "https://224.0.0.1/hook", false),
            (&strict, "https://255.255.255.255/hook", false),
            (&strict, "https://[fd00:ec2::254]/hook", false),
            (&strict, "https://[fe80::1]/hook", false),
            (&strict, "https://[ff02::1]/hook", false),
            (&strict, "https://192.0.2.10/hook", false),
            (&strict, "https://10.1.2.3/hook", false),
            (&strict, "https://172.31.255.255/hook", false),
            (&strict, "https://172.32.0.1/hook", true),
            (&strict, "https://192.168.0.1/hook", false),
            (&strict, "https://[2001:db8::1]/hook", false),
            (&lb, "https://127.0.0.1/hook", true),
            (&lb, "https://[::ffff:127.0.0.1]/hook", true),
            (&lb, "https://[::1]/hook", false),
            (&lb, "https://10.0.0.1/hook", false),
            (&lb, "http://127.0.0.1/hook", false),
        ];
        for (policy, url, ok) in cases {
            let got = policy.check_url(url);
            assert_eq!(got.is_ok(), ok, "{url:?} with {policy:?}: {got:?}");
        }
    }

    #[test]
    fn check_url_returns_the_parsed_url() {
        let url = EndpointPolicy::default()
            .check_url("https://Example.COM/a?b=c")
            .unwrap();
        assert_eq!(url.as_str(), "https://example.com/a?b=c");
    }

    #[test]
    fn check_url_error_kinds_and_messages() {
        let strict = EndpointPolicy::default();
        assert_eq!(
            strict.check_url("http://example.com/"),
            Err(EndpointError::HttpNotAllowed)
        );
        assert_eq!(
            strict.check_url("https://u:p@example.com/"),
            Err(EndpointError::UserInfo)
        );
        assert_eq!(strict.check_url("https://example.com/#x"), Err(EndpointError::Fragment));
        assert!(matches!(strict.check_url("/x"), Err(EndpointError::NotAbsolute { .. })));
        assert!(matches!(
            strict.check_url("ws://example.com/"),
            Err(EndpointError::UnsupportedScheme { .. })
        ));
        assert_eq!(
            strict
                .check_url("http://example.com/")
                .unwrap_err()
                .for_field("notificationUrl")
                .to_string(),
            "notificationUrl must use https (start the server with --webhook-allow-http to allow http)"
        );
        assert_eq!(
            strict
                .check_url("https://10.0.0.5/")
                .unwrap_err()
                .for_field("notificationUrl")
                .to_string(),
            "notificationUrl resolves to 10.0.0.5, a private address; allow it with --webhook-allow-network"
        );
        assert_eq!(
            strict.check_url("https://[::ffff:127.0.0.1]/").unwrap_err().to_string(),
            "the webhook URL resolves to ::ffff:127.0.0.1 (which embeds 127.0.0.1), a loopback address; \
             allow it with --webhook-allow-network"
        );
        let metadata = strict.check_url("https://169.254.169.254/").unwrap_err().to_string();
        assert!(metadata.contains("cloud instance metadata"), "{metadata}");
        assert!(metadata.contains("169.254.169.254/32"), "{metadata}");
    }

    #[test]
    fn check_ip_classes() {
        let strict = EndpointPolicy::default();
        let class = |s: &str| match strict.check_ip(s.parse().unwrap()) {
            Ok(()) => None,
            Err(EndpointError::ForbiddenAddress { class, .. }) => Some(class),
            Err(other) => panic!("{s}: unexpected {other:?}"),
        };
        use AddressClass::*;
        let table = [
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("172.15.255.255", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("2606:4700:4700::1111", None),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::808:808", None),
            ("2002:808:808::1", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::127.0.0.1", Some(Loopback)),
            ("10.0.0.5", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("192.168.255.255", Some(Private)),
            ("fc00::1", Some(Private)),
            ("fdff::1", Some(Private)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:0:10.0.0.1", Some(Private)),
            ("64:ff9b::10.0.0.1", Some(Private)),
            ("64:ff9b:1::1", Some(Private)),
            ("169.254.0.1", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("169.254.169.254", Some(CloudMetadata)),
            ("::ffff:169.254.169.254", Some(CloudMetadata)),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("168.63.129.16", Some(CloudMetadata)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("100.64.0.1", Some(SharedAddressSpace)),
            ("100.127.255.255", Some(SharedAddressSpace)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("240.0.0.1", Some(Reserved)),
            ("192.0.0.192", Some(Reserved)),
            ("2001::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("4000::1", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.1", Some(Documentation)),
            ("203.0.113.1", Some(Documentation)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("2001:2::1", Some(Benchmarking)),
        ];
        for (ip, expected) in table {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn allowed_networks_exempt_addresses() {
        let policy = EndpointPolicy {
            allow_http: false,
            allowed_networks: vec![cidr("127.0.0.0/8"), cidr("10.1.0.0/16"), cidr("fd00::/8")],
            allowed_on_ports: vec![],
        };
        let ok = |s: &str| policy.check_ip(s.parse().unwrap()).is_ok();
        assert!(ok("127.0.0.1"));
        assert!(ok("::ffff:127.0.0.1"), "mapped form follows the IPv4 allowance");
        assert!(!ok("::1"), "127.0.0.0/8 does not allow IPv6 loopback");
        assert!(ok("10.1.200.3"));
        assert!(!ok("10.2.0.1"));
        assert!(ok("fd12:3456::1"));
        assert!(!ok("fc00::1"));
        // Metadata addresses need an exact allowance, not merely an enclosing network.
        assert!(!ok("fd00:ec2::254"));
        let wide = EndpointPolicy {
            allow_http: false,
            allowed_networks: vec![cidr("169.254.0.0/16")],
            allowed_on_ports: vec![],
        };
        assert!(wide.check_ip("169.254.1.1".parse().unwrap()).is_ok());
        assert!(wide.check_ip("169.254.169.254".parse().unwrap()).is_err());
        let exact = EndpointPolicy {
            allow_http: false,
            allowed_networks: vec![cidr("169.254.169.254")],
            allowed_on_ports: vec![],
        };
        assert!(exact.check_ip("169.254.169.254".parse().unwrap()).is_ok());
        assert!(exact.check_ip("::ffff:169.254.169.254".parse().unwrap()).is_ok());
    }

    #[test]
    fn cidr_parsing() {
        let c = cidr("127.0.0.0/8");
        assert_eq!((c.network(), c.prefix_len()), ("127.0.0.0".parse().unwrap(), 8));
        assert_eq!(cidr("10.1.2.3/32").to_string(), "10.1.2.3/32");
        assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("::1/128").to_string(), "::1/128");
        assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
        assert_eq!(cidr(" 192.168.0.0/16 ").to_string(), "192.168.0.0/16");

        let err = |s: &str| parse_network(s).unwrap_err();
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/x",
            "10.0.0.0/8/8",
            "example.com/8",
            "10.0.0/8",
            "",
        ] {
            assert_eq!(err(bad), NetworkError::Syntax(bad.to_owned()), "{bad:?}");
        }
        assert_eq!(
            err("10.1.2.3/8"),
            NetworkError::HostBitsSet {
                given: "10.1.2.3/8".parse().unwrap(),
                suggested: "10.0.0.0/8".parse().unwrap()
            }
        );
        assert_eq!(
            err("fd00::1/8").to_string(),
            "fd00::1/8 has host bits set; did you mean fd00::/8?"
        );
        assert!(err("10.0.0.0/33").to_string().contains("not a network"));
    }

    /// ipnet's matching, as the policy relies on it: families never cross-match.
    #[test]
    fn cidr_matching() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let c = cidr("172.16.0.0/12");
        assert!(c.contains(&ip("172.16.0.0")));
        assert!(c.contains(&ip("172.31.255.255")));
        assert!(!c.contains(&ip("172.32.0.0")));
        assert!(!c.contains(&ip("172.15.255.255")));
        assert!(!c.contains(&ip("::ffff:172.16.0.1")), "families never cross-match");

        let all4 = cidr("0.0.0.0/0");
        assert!(all4.contains(&ip("255.255.255.255")));
        assert!(!all4.contains(&ip("::")));

        let host = cidr("10.1.2.3");
        assert!(host.contains(&ip("10.1.2.3")));
        assert!(!host.contains(&ip("10.1.2.4")));

        let v6 = cidr("fe80::/10");
        assert!(v6.contains(&ip("fe80::1")));
        assert!(v6.contains(&ip("febf:ffff::1")));
        assert!(!v6.contains(&ip("fec0::1")));
        let all6 = cidr("::/0");
        assert!(all6.contains(&ip("ffff::1")));
        assert!(!all6.contains(&ip("1.2.3.4")));
    }
}
