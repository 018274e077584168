//! The work-location actions: `setManualLocation`, `setAutomaticLocation` (a body of
//! `{"workLocationType", "placeId"?}`), `clearAutomaticLocation` and `clearLocation` (no body).
//!
//! Graph scopes the manual and automatic layers to "the current date". Whose date is read from
//! Graph's own way of naming a caller's zone, `Prefer: outlook.timezone="…"` (Windows or IANA
//! name); without it, from the server's `--work-location-time-zone` (UTC by default).
use super::body;
use super::error::ApiError;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName};
use presence_core::work_location::{PlaceId, WorkLocationType};
use presence_core::zone::lookup_time_zone;
use presence_core::{Command, DayZone, LocationInput, LocationLayer};
use schemars::JsonSchema;
use serde::Deserialize;

/// The body of `setManualLocation` and `setAutomaticLocation`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetLocationBody {
    /// `unspecified`, `office`, `remote` or `timeOff` (any case).
    pub work_location_type: Option<String>,
    pub place_id: Option<String>,
}

/// `setManualLocation` or `setAutomaticLocation`: the layer holds the location until the next
/// midnight of the caller's zone.
pub fn set(
    layer: LocationLayer,
    headers: &HeaderMap,
    bytes: &Bytes,
    default_zone: &DayZone,
) -> Result<Command, ApiError> {
    let b: SetLocationBody = body::required(body::json(headers, bytes)?)?;
    let location = location(b)?;
    Ok(Command::SetWorkLocation {
        layer,
        location,
        day: day_zone(headers)?.unwrap_or_else(|| default_zone.clone()),
    })
}

/// `clearLocation` (both layers, `all`) or `clearAutomaticLocation`. Graph: "Don't supply a
/// request body", and the SDKs send none; an empty object is accepted too.
pub fn clear(all: bool, headers: &HeaderMap, bytes: &Bytes) -> Result<Command, ApiError> {
    let _: Option<serde_json::Map<String, serde_json::Value>> = body::json(headers, bytes)?;
    Ok(if all {
        Command::ClearLocation
    } else {
        Command::ClearAutomaticLocation
    })
}

fn location(b: SetLocationBody) -> Result<LocationInput, ApiError> {
    let kind = b
        .work_location_type
        .as_deref()
        .ok_or_else(|| ApiError::invalid_argument("[WorkLocationType]: The WorkLocationType field is required."))?;
    let kind =
        WorkLocationType::parse(kind).map_err(|e| ApiError::invalid_argument(format!("[WorkLocationType]: {e}.")))?;
    let place_id = b
        .place_id
        .as_deref()
        .map(PlaceId::parse)
        .transpose()
        .map_err(|e| ApiError::invalid_argument(format!("[PlaceId]: {e}.")))?;
    Ok(LocationInput { kind, place_id })
}

const PREFER: HeaderName = HeaderName::from_static("prefer");
/// No zone name is longer; a longer preference is refused before any lookup.
const MAX_PREFER_CHARS: usize = 1024;

/// The zone of `Prefer: outlook.timezone="…"`, if the request names one. Other preferences in
/// the header (`return=minimal`, ...) are ignored, as Graph ignores preferences it does not
/// apply; a zone that is named but unknown is a 400, so a typo never silently means UTC.
pub fn day_zone(headers: &HeaderMap) -> Result<Option<DayZone>, ApiError> {
    let mut named = None;
    for value in headers.get_all(PREFER) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request("The Prefer header is not valid text."))?;
        if text.len() > MAX_PREFER_CHARS {
            return Err(ApiError::bad_request(format!(
                "The Prefer header is longer than {MAX_PREFER_CHARS} characters."
            )));
        }
        for preference in text.split(',') {
            let Some((key, zone)) = preference.split_once('=') else {
                continue;
            };
            if key.trim().eq_ignore_ascii_case("outlook.timezone") {
                let zone = zone.trim();
                let zone = zone.strip_prefix('"').and_then(|z| z.strip_suffix('"')).unwrap_or(zone);
                named = Some(zone.to_owned());
            }
        }
    }
    named
        .map(|zone| {
            lookup_time_zone(&zone)
                .map(DayZone::new)
                .map_err(|e| ApiError::invalid_argument(format!("Prefer: outlook.timezone: {e}.")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn prefer(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(PREFER, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn zone_of(values: &[&str]) -> Result<Option<DayZone>, u16> {
        day_zone(&prefer(values)).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn the_zone_comes_from_prefer_outlook_timezone() {
        let la = DayZone::new(jiff::tz::TimeZone::get("America/Los_Angeles").unwrap());
        assert_eq!(zone_of(&[]), Ok(None));
        assert_eq!(zone_of(&["return=minimal"]), Ok(None));
        assert_eq!(
            zone_of(&[r#"outlook.timezone="Pacific Standard Time""#]),
            Ok(Some(la.clone()))
        );
        assert_eq!(
            zone_of(&["return=minimal, Outlook.TimeZone = America/Los_Angeles"]),
            Ok(Some(la.clone()))
        );
        assert_eq!(
            zone_of(&["return=minimal", r#"outlook.timezone="america/los_angeles""#]),
            Ok(Some(la))
        );
        assert_eq!(zone_of(&[r#"outlook.timezone="Mars/Olympus""#]), Err(400));
        assert_eq!(zone_of(&[&format!("outlook.timezone={}", "x".repeat(2000))]), Err(400));
    }

    #[test]
    fn bodies_become_commands() {
        let json = {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h
        };
        let utc = DayZone::utc();
        let set = |body: &str| {
            set(LocationLayer::Manual, &json, &Bytes::from(body.to_owned()), &utc)
                .map_err(|e| (e.status.as_u16(), e.message))
        };
        let Ok(Command::SetWorkLocation { layer, location, day }) =
            set(r#"{"placeId": "p-1", "workLocationType": "TIMEOFF"}"#)
        else {
            panic!("expected a set command")
        };
        assert_eq!(
            (layer, location.kind, location.place_id.unwrap().as_str(), day),
            (LocationLayer::Manual, WorkLocationType::TimeOff, "p-1", utc.clone())
        );
        assert!(set(r#"{"workLocationType": "office", "placeId": null}"#).is_ok());
        let missing = set(r#"{"placeId": "p"}"#).unwrap_err();
        assert_eq!(missing.0, 400);
        assert!(missing.1.contains("WorkLocationType"), "{}", missing.1);
        assert_eq!(set(r#"{"workLocationType": "moon"}"#).unwrap_err().0, 400);
        assert_eq!(
            set(r#"{"workLocationType": "office", "placeId": ""}"#).unwrap_err().0,
            400
        );
        assert_eq!(set(r#"{"workLocationType": 3}"#).unwrap_err().0, 400);
        assert_eq!(set("").unwrap_err().0, 400);
        // The clears take no body, or an empty object.
        let none = HeaderMap::new();
        assert_eq!(clear(true, &none, &Bytes::new()).unwrap(), Command::ClearLocation);
        let automatic = clear(false, &json, &Bytes::from_static(b"{}"));
        assert_eq!(automatic.unwrap(), Command::ClearAutomaticLocation);
        assert_eq!(clear(true, &json, &Bytes::from_static(b"[]")).unwrap_err().status, 400);
    }
}
