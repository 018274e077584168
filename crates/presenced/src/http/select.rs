//! `$select` on presence reads (`GET …/presence`, `getPresencesByUserId`): only the named
//! properties are written, plus `id`, as Graph answers.
//!
//! An unknown property is Graph's 400 (`Parsing OData Select and Expand failed: Could not find a
//! property named 'x' on type 'microsoft.graph.presence'.`). Other query options are ignored, as
//! they were before. A read without a query never gets here (the hot path stays as it is).
use super::dto::PresenceDto;
use super::error::ApiError;
use percent_encoding::percent_decode_str;

/// The presence properties in the order a read writes them (`id` always comes first).
pub const PROPERTIES: [&str; 7] = [
    "id",
    "availability",
    "activity",
    "statusMessage",
    "outOfOfficeSettings",
    "sequenceNumber",
    "workLocation",
];

/// A `$select` value is a short list of property names; anything longer is refused unread.
const MAX_SELECT_BYTES: usize = 1024;
/// Each property named at most once; more than this many items is not a real selection.
const MAX_SELECT_ITEMS: usize = 32;

/// The properties a `$select` asked for, in the order it named them (`id` included or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    named: Vec<&'static str>,
}

impl Selection {
    fn has(&self, property: &str) -> bool {
        property == "id" || self.named.contains(&property)
    }

    /// `(availability,activity)`: how an `@odata.context` names a projection.
    pub fn context_suffix(&self) -> String {
        format!("({})", self.named.join(","))
    }
}

/// The `$select` of a query string, if it has one. `$select=*` is no selection. Keys are matched
/// with or without the `$` (Graph's beta takes both) and case-insensitively; a key given twice is
/// a 400.
pub fn parse(query: Option<&str>) -> Result<Option<Selection>, ApiError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut found: Option<String> = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key)?;
        let name = key.strip_prefix('$').unwrap_or(&key);
        if !name.eq_ignore_ascii_case("select") {
            continue;
        }
        if found.is_some() {
            return Err(ApiError::bad_request("The query specifies $select more than once."));
        }
        if value.len() > MAX_SELECT_BYTES {
            return Err(ApiError::bad_request(format!(
                "The $select option is longer than {MAX_SELECT_BYTES} bytes."
            )));
        }
        found = Some(decode(value)?);
    }
    let Some(value) = found else {
        return Ok(None);
    };
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    if items.len() > MAX_SELECT_ITEMS {
        return Err(ApiError::bad_request(format!(
            "The $select option names more than {MAX_SELECT_ITEMS} properties."
        )));
    }
    if items == ["*"] {
        return Ok(None);
    }
    let mut named = Vec::with_capacity(items.len());
    for item in items {
        if item.is_empty() {
            return Err(ApiError::bad_request(
                "Parsing OData Select and Expand failed: the $select option has an empty property name.",
            ));
        }
        let property = PROPERTIES
            .iter()
            .copied()
            .find(|p| p.eq_ignore_ascii_case(item))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Parsing OData Select and Expand failed: Could not find a property named '{}' on type 'microsoft.graph.presence'.",
                    item.chars().take(64).collect::<String>()
                ))
            })?;
        if !named.contains(&property) {
            named.push(property);
        }
    }
    Ok(Some(Selection { named }))
}

/// Query values are percent-encoded (`%24select`, `availability%2Cactivity`); `+` is a space.
fn decode(text: &str) -> Result<String, ApiError> {
    let spaced = text.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("The query string is not valid UTF-8."))
}

/// Append the selected properties of `dto` (and `id`, and its `@odata.context` if it has one),
/// in the order a full read writes them. Each value is serde's, like the full document's.
pub fn write(dto: &PresenceDto, selection: &Selection, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let mut fields: Vec<(&str, serde_json::Value)> = Vec::with_capacity(PROPERTIES.len() + 1);
    if let Some(context) = &dto.odata_context {
        fields.push(("@odata.context", serde_json::Value::from(context.as_str())));
    }
    let value = |property: &str| -> Result<serde_json::Value, serde_json::Error> {
        match property {
            "id" => serde_json::to_value(&dto.id),
            "availability" => serde_json::to_value(dto.availability),
            "activity" => serde_json::to_value(dto.activity),
            "statusMessage" => serde_json::to_value(&dto.status_message),
            "outOfOfficeSettings" => serde_json::to_value(&dto.out_of_office_settings),
            "sequenceNumber" => serde_json::to_value(&dto.sequence_number),
            _ => serde_json::to_value(&dto.work_location),
        }
    };
    for property in PROPERTIES.iter().copied().filter(|p| selection.has(p)) {
        fields.push((property, value(property)?));
    }
    out.push(b'{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, key)?;
        out.push(b':');
        serde_json::to_writer(&mut *out, value)?;
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(query: &str) -> Result<Option<Vec<&'static str>>, String> {
        parse(Some(query)).map(|s| s.map(|s| s.named)).map_err(|e| e.message)
    }

    #[test]
    fn select_forms_the_sdks_send() {
        assert_eq!(parse(None).unwrap(), None);
        assert_eq!(named("").unwrap(), None);
        assert_eq!(
            named("$select=availability,activity").unwrap(),
            Some(vec!["availability", "activity"])
        );
        // kiota percent-encodes the dollar and the comma.
        assert_eq!(
            named("%24select=availability%2Cactivity").unwrap(),
            Some(vec!["availability", "activity"])
        );
        assert_eq!(named("select=ACTIVITY, id").unwrap(), Some(vec!["activity", "id"]));
        assert_eq!(
            named("$top=1&$select=workLocation&$select2=x").unwrap(),
            Some(vec!["workLocation"])
        );
        assert_eq!(named("$select=activity,activity").unwrap(), Some(vec!["activity"]));
        assert_eq!(named("$select=*").unwrap(), None);
        assert_eq!(named("$filter=x").unwrap(), None);
    }

    #[test]
    fn bad_selections_are_graph_400s() {
        let unknown = named("$select=availability,mood").unwrap_err();
        assert_eq!(
            unknown,
            "Parsing OData Select and Expand failed: Could not find a property named 'mood' on type 'microsoft.graph.presence'."
        );
        for bad in [
            "$select=",
            "$select=availability,",
            "$select=a&$select=b",
            "$select=%FF",
            "$select=*,id",
        ] {
            assert!(named(bad).is_err(), "{bad}");
        }
        assert!(named(&format!("$select={}", "id,".repeat(400))).is_err());
        assert!(named(&format!("$select={}", "id,".repeat(40))).is_err());
        let long = named(&format!("$select={}", "x".repeat(500))).unwrap_err();
        assert!(long.len() < 200, "{long}");
    }
}
