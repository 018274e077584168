//! Graph's JSON shapes, and their conversion to and from the core's types.
//!
//! Request fields are all `Option` so that a missing field gets Graph's own message
//! ("[SessionId]: The SessionId field is required.") rather than serde's.
use super::error::ApiError;
use crate::json_text;
use presence_core::duration::parse_wire_duration;
use presence_core::view::MessageExpiry;
use presence_core::zone::resolve_date_time;
use presence_core::{
    Activity, Availability, OutOfOfficeSettings, PreferredState, PresenceView, SessionId, SessionState,
    StatusMessageInput, UserId,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// A string field of a request body, borrowed from the body unless it has JSON escapes. Each one
/// is parsed into a core type at once, so an owned copy was an allocation per field (four per
/// setPresence) for nothing. serde's own `Cow<str>` support borrows only for a bare `Cow` field,
/// never inside an `Option`, hence this type.
#[derive(Debug, PartialEq)]
pub struct Text<'a>(Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E>(self, text: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Documented as the string it is.
impl JsonSchema for Text<'_> {
    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }

    fn inline_schema() -> bool {
        true
    }
}

// Borrows its strings from the request body (`Text`).
#[derive(Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", bound(deserialize = "'de: 'a"))]
pub struct SetPresenceBody<'a> {
    pub session_id: Option<Text<'a>>,
    pub availability: Option<Text<'a>>,
    pub activity: Option<Text<'a>>,
    pub expiration_duration: Option<Text<'a>>,
}

// Borrows its strings from the request body (`Text`).
#[derive(Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", bound(deserialize = "'de: 'a"))]
pub struct ClearPresenceBody<'a> {
    pub session_id: Option<Text<'a>>,
}

// Borrows its strings from the request body (`Text`).
#[derive(Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", bound(deserialize = "'de: 'a"))]
pub struct SetPreferredBody<'a> {
    pub availability: Option<Text<'a>>,
    pub activity: Option<Text<'a>>,
    pub expiration_duration: Option<Text<'a>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetStatusMessageBody {
    pub status_message: Option<StatusMessageDto>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusMessageDto {
    pub message: Option<ItemBody>,
    pub expiry_date_time: Option<DateTimeTimeZone>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemBody {
    pub content: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DateTimeTimeZone {
    pub date_time: Option<String>,
    pub time_zone: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetOutOfOfficeBody {
    pub out_of_office_settings: Option<OutOfOfficeDto>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutOfOfficeDto {
    pub is_out_of_office: Option<bool>,
    pub message: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct GetPresencesBody {
    pub ids: Option<Vec<String>>,
}

fn required<'a>(value: Option<&'a str>, graph_name: &str) -> Result<&'a str, ApiError> {
    value.ok_or_else(|| ApiError::invalid_argument(format!("[{graph_name}]: The {graph_name} field is required.")))
}

pub fn pair(availability: Option<&str>, activity: Option<&str>) -> Result<(Availability, Activity), ApiError> {
    let availability = Availability::parse(required(availability, "Availability")?)
        .map_err(|e| ApiError::invalid_argument(e.to_string()))?;
    let activity =
        Activity::parse(required(activity, "Activity")?).map_err(|e| ApiError::invalid_argument(e.to_string()))?;
    Ok((availability, activity))
}

pub fn duration(raw: Option<&str>) -> Result<Option<jiff::SignedDuration>, ApiError> {
    raw.map(|text| {
        parse_wire_duration(text)
            .map_err(|e| ApiError::invalid_argument(format!("The provided [ExpirationDuration] is invalid: {e}")))
    })
    .transpose()
}

pub fn session_id(raw: Option<&str>) -> Result<SessionId, ApiError> {
    SessionId::parse(required(raw, "SessionId")?).map_err(|e| ApiError::invalid_argument(format!("[SessionId]: {e}.")))
}

impl SetPresenceBody<'_> {
    pub fn session_state(&self) -> Result<SessionState, ApiError> {
        let (availability, activity) = pair(self.availability.as_deref(), self.activity.as_deref())?;
        SessionState::new(availability, activity).map_err(|e| ApiError::invalid_argument(e.to_string()))
    }
}

impl SetPreferredBody<'_> {
    pub fn preferred_state(&self) -> Result<PreferredState, ApiError> {
        let (availability, activity) = pair(self.availability.as_deref(), self.activity.as_deref())?;
        PreferredState::new(availability, activity).map_err(|e| ApiError::invalid_argument(e.to_string()))
    }
}

impl SetStatusMessageBody {
    /// `None` clears the message: Graph has no clear action, and Teams clears a note by saving it empty.
    pub fn into_input(self) -> Result<Option<StatusMessageInput>, ApiError> {
        let dto = self
            .status_message
            .ok_or_else(|| ApiError::invalid_argument("[StatusMessage]: The StatusMessage field is required."))?;
        let message = dto.message.unwrap_or(ItemBody {
            content: None,
            content_type: None,
        });
        if let Some(kind) = message
            .content_type
            .as_deref()
            .filter(|k| !k.eq_ignore_ascii_case("text"))
        {
            return Err(ApiError::invalid_argument(format!(
                "Only contentType 'text' is supported for status messages (got '{}').",
                kind.chars().take(32).collect::<String>()
            )));
        }
        let content = message.content.unwrap_or_default();
        if content.is_empty() {
            return Ok(None);
        }
        let expiry = dto.expiry_date_time.map(expiry).transpose()?;
        StatusMessageInput::new(content, expiry)
            .map(Some)
            .map_err(|e| ApiError::invalid_argument(e.to_string()))
    }
}

fn expiry(dto: DateTimeTimeZone) -> Result<MessageExpiry, ApiError> {
    let date_time = dto
        .date_time
        .ok_or_else(|| ApiError::invalid_argument("[ExpiryDateTime.DateTime]: The DateTime field is required."))?;
    let time_zone = dto.time_zone.unwrap_or_else(|| "UTC".to_owned());
    let resolved = resolve_date_time(&date_time, &time_zone)
        .map_err(|e| ApiError::invalid_argument(format!("[ExpiryDateTime]: {e}")))?;
    // Echoed as Graph writes a dateTime: the wall clock in `timeZone`, seven fractional digits
    // (for a dateTime sent with `Z` or an offset, that instant's wall clock there).
    Ok(MessageExpiry {
        at: resolved.at,
        date_time: resolved.wall_clock_text(),
        time_zone,
    })
}

impl SetOutOfOfficeBody {
    pub fn into_settings(self) -> Result<OutOfOfficeSettings, ApiError> {
        let dto = self.out_of_office_settings.ok_or_else(|| {
            ApiError::invalid_argument("[OutOfOfficeSettings]: The OutOfOfficeSettings field is required.")
        })?;
        Ok(OutOfOfficeSettings {
            is_out_of_office: dto.is_out_of_office.unwrap_or(false),
            message: dto.message.map(String::into_boxed_str),
        })
    }
}

// ---- responses ----

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceDto {
    #[serde(rename = "@odata.context", skip_serializing_if = "Option::is_none")]
    pub odata_context: Option<String>,
    pub id: String,
    #[schemars(with = "String")]
    pub availability: Availability,
    #[schemars(with = "String")]
    pub activity: Activity,
    pub status_message: Option<StatusMessageOut>,
    pub out_of_office_settings: OutOfOfficeOut,
    pub sequence_number: String,
    pub work_location: WorkLocationOut,
}

/// Graph's `userWorkLocation`: enums in camelCase, as Graph writes OData enums.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkLocationOut {
    /// `unspecified`, `office`, `remote` or `timeOff`.
    pub work_location_type: &'static str,
    /// `none`, `manual` or `automatic` (`scheduled`, Graph's calendar layer, never occurs here).
    pub source: &'static str,
    pub place_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusMessageOut {
    pub message: ItemBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry_date_time: Option<DateTimeTimeZone>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_date_time: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutOfOfficeOut {
    pub message: Option<String>,
    pub is_out_of_office: bool,
}

impl PresenceDto {
    /// `show_dates`: only the user themself sees when their message was published and expires.
    pub fn from_view(id: &UserId, view: PresenceView, show_dates: bool, odata_context: Option<String>) -> Self {
        let status_message = view.status_message.map(|m| StatusMessageOut {
            message: ItemBody {
                content: Some(m.content),
                content_type: Some("text".into()),
            },
            expiry_date_time: m.expiry.filter(|_| show_dates).map(|e| DateTimeTimeZone {
                date_time: Some(e.date_time),
                time_zone: Some(e.time_zone),
            }),
            published_date_time: show_dates.then(|| crate::graph_time::format(m.published_at)),
        });
        PresenceDto {
            odata_context,
            id: id.to_string(),
            availability: view.availability,
            activity: view.activity,
            status_message,
            out_of_office_settings: OutOfOfficeOut {
                message: view.out_of_office.message.map(String::from),
                is_out_of_office: view.out_of_office.is_out_of_office,
            },
            sequence_number: view.sequence.to_string(),
            work_location: WorkLocationOut {
                work_location_type: view.work_location.kind.as_str(),
                source: view.work_location.source.as_str(),
                place_id: view.work_location.place_id.map(String::from),
            },
        }
    }

    /// Append exactly what `serde_json::to_writer(out, self)` writes (a test holds the two
    /// equal). Written by hand because this is every read's body, and serde_json's per-byte
    /// escaping of every key and value was ~15% of a read's instructions; the keys here are
    /// constants and most values need no escaping.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.push(b'{');
        if let Some(context) = &self.odata_context {
            out.extend_from_slice(b"\"@odata.context\":");
            json_text::string(out, context);
            out.push(b',');
        }
        out.extend_from_slice(b"\"id\":");
        json_text::string(out, &self.id);
        out.extend_from_slice(b",\"availability\":");
        json_text::string(out, self.availability.as_str());
        out.extend_from_slice(b",\"activity\":");
        json_text::string(out, self.activity.as_str());
        out.extend_from_slice(b",\"statusMessage\":");
        // Rare, and nested: serde's own output.
        serde_json::to_writer(&mut *out, &self.status_message)?;
        out.extend_from_slice(b",\"outOfOfficeSettings\":{\"message\":");
        json_text::optional(out, self.out_of_office_settings.message.as_deref(), json_text::string);
        out.extend_from_slice(if self.out_of_office_settings.is_out_of_office {
            b",\"isOutOfOffice\":true},\"sequenceNumber\":"
        } else {
            b",\"isOutOfOffice\":false},\"sequenceNumber\":"
        });
        json_text::string(out, &self.sequence_number);
        out.extend_from_slice(b",\"workLocation\":{\"workLocationType\":");
        json_text::string(out, self.work_location.work_location_type);
        out.extend_from_slice(b",\"source\":");
        json_text::string(out, self.work_location.source);
        out.extend_from_slice(b",\"placeId\":");
        json_text::optional(out, self.work_location.place_id.as_deref(), json_text::string);
        out.extend_from_slice(b"}}");
        Ok(())
    }
}

/// `{"@odata.context":…,"value":[...]}`, as serde_json writes a struct with those fields (the
/// context left out when `None`); each item projected by `select` when there is one.
pub fn write_presence_list(
    context: Option<&str>,
    dtos: &[PresenceDto],
    select: Option<&super::select::Selection>,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    out.push(b'{');
    if let Some(context) = context {
        out.extend_from_slice(b"\"@odata.context\":");
        json_text::string(out, context);
        out.push(b',');
    }
    out.extend_from_slice(b"\"value\":[");
    for (i, dto) in dtos.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match select {
            None => dto.write_json(out)?,
            Some(selection) => super::select::write(dto, selection, out)?,
        }
    }
    out.extend_from_slice(b"]}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::view::SequenceNumber;

    /// What every SDK sends is read by serde without copying a string; an escaped one is decoded.
    #[test]
    fn write_bodies_borrow_their_strings_unless_escaped() {
        let text = r#"{"sessionId":"22553876-f5ab-4529-bffb-cfe50aa89f87","availability":"Busy","activity":"InACall","expirationDuration":"PT1H"}"#;
        let body: SetPresenceBody = serde_json::from_str(text).unwrap();
        assert!(matches!(body.session_id, Some(Text(Cow::Borrowed(_)))));
        assert_eq!(body.activity.as_deref(), Some("InACall"));
        assert_eq!(body.expiration_duration.as_deref(), Some("PT1H"));
        let escaped: SetPreferredBody = serde_json::from_str(r#"{"availability":"B\u0075sy"}"#).unwrap();
        assert!(matches!(escaped.availability, Some(Text(Cow::Owned(_)))));
        assert_eq!(escaped.availability.as_deref(), Some("Busy"));
    }

    fn dto(odata_context: Option<&str>, id: &str, status: Option<StatusMessageOut>, ooo: Option<&str>) -> PresenceDto {
        PresenceDto {
            odata_context: odata_context.map(str::to_owned),
            id: id.to_owned(),
            availability: Availability::DoNotDisturb,
            activity: Activity::Presenting,
            status_message: status,
            out_of_office_settings: OutOfOfficeOut {
                message: ooo.map(str::to_owned),
                is_out_of_office: ooo.is_some(),
            },
            sequence_number: SequenceNumber(1_234_567).to_string(),
            work_location: WorkLocationOut {
                work_location_type: "timeOff",
                source: "manual",
                place_id: ooo.map(|o| format!("place \"{o}\"")),
            },
        }
    }

    #[test]
    fn the_hand_written_presence_json_is_byte_for_byte_what_serde_writes() {
        let status = |dates: bool| StatusMessageOut {
            message: ItemBody {
                content: Some("In a \"meeting\"\n\tback at 3 \\ 15:00 – ☕".into()),
                content_type: Some("text".into()),
            },
            expiry_date_time: dates.then(|| DateTimeTimeZone {
                date_time: Some("2026-12-01T10:00:00".into()),
                time_zone: Some("W. Europe Standard Time".into()),
            }),
            published_date_time: dates.then(|| "2026-12-01T09:00:00Z".into()),
        };
        let samples = [
            dto(None, "fa8bf3dc-eca7-46b7-bad1-db199b62afc3", None, None),
            dto(
                Some("http://localhost:8080/v1.0/$metadata#users('fa8bf3dc-eca7-46b7-bad1-db199b62afc3')/presence/$entity"),
                "fa8bf3dc-eca7-46b7-bad1-db199b62afc3",
                Some(status(true)),
                Some("Away until Monday, \"urgent\" → call \u{1}"),
            ),
            dto(Some("http://h/beta/x"), "alice@contoso.com", Some(status(false)), Some("")),
            dto(None, "quote\"back\\slash\u{7f}/é", None, Some("plain")),
        ];
        for &availability in Availability::ALL {
            for &activity in Activity::ALL {
                let mut sample = dto(None, "u", None, None);
                (sample.availability, sample.activity) = (availability, activity);
                let mut ours = Vec::new();
                sample.write_json(&mut ours).unwrap();
                assert_eq!(ours, serde_json::to_vec(&sample).unwrap());
            }
        }
        for sample in &samples {
            let mut ours = Vec::new();
            sample.write_json(&mut ours).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(sample).unwrap());
        }
        #[derive(Serialize)]
        struct List<'a> {
            #[serde(rename = "@odata.context", skip_serializing_if = "Option::is_none")]
            context: Option<&'a str>,
            value: &'a [PresenceDto],
        }
        for context in [
            None,
            Some("http://h/v1.0/$metadata#Collection(microsoft.graph.presence)"),
        ] {
            for list in [&samples[..], &samples[..1], &[]] {
                let mut ours = Vec::new();
                write_presence_list(context, list, None, &mut ours).unwrap();
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    serde_json::to_string(&List { context, value: list }).unwrap()
                );
            }
        }
    }
}
