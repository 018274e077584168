//! Where a presence session comes from: an application's `setPresence`, or a connected client
//! (desktop, mobile, web) whose session lives as long as its connection.
use serde::{Deserialize, Serialize};

/// Longest device name a client may give ("desktop", "mobile", "web", or its own name).
pub const MAX_DEVICE_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Set through `setPresence` by an application whose id is not the session's id (when it is,
    /// as Graph asks apps to do, nothing is recorded: the id says it).
    App { application_id: String },
    /// A connected client.
    Client(ClientLink),
}

/// A client session's connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLink {
    pub device: Device,
    /// The server process (or node) holding the connection: after a restart, sessions of an
    /// earlier process are treated as disconnected from the start.
    pub epoch: String,
    /// While connected the session never expires; once disconnected it expires after a grace.
    pub connected: bool,
}

/// What a client says it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Device(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a device is 1 to {MAX_DEVICE_CHARS} printable characters (desktop, mobile, web, or a name)")]
pub struct DeviceError;

impl Device {
    pub fn parse(raw: &str) -> Result<Device, DeviceError> {
        let raw = raw.trim();
        let ok = !raw.is_empty() && raw.chars().count() <= MAX_DEVICE_CHARS && raw.chars().all(|c| !c.is_control());
        if ok {
            Ok(Device(raw.to_owned()))
        } else {
            Err(DeviceError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_short_printable_names() {
        assert_eq!(Device::parse(" desktop ").unwrap().as_str(), "desktop");
        assert!(Device::parse("Anna's iPad").is_ok());
        assert!(Device::parse("").is_err());
        assert!(Device::parse("a\nb").is_err());
        assert!(Device::parse(&"x".repeat(65)).is_err());
    }
}
