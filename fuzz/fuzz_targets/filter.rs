//! Subscription resources: `parse_resource` and `parse_filter` on arbitrary text.
//!
//! Invariants beyond "never panics":
//! - `parse_resource` accepts 1..=650 ids, all distinct;
//! - `parse_filter` accepts 1..=650 ids (duplicates allowed: de-duplication is `parse_resource`'s);
//! - an accepted filter, re-rendered as `id in ('a','b',...)` and as a full resource, parses back
//!   to the same ids (de-duplicated for the resource), and each id works in the single-user form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presence_core::UserId;
use presenced::subscription::filter::{parse_filter, parse_resource, MAX_SUBSCRIBED_USERS};

fn dedup(ids: &[UserId]) -> Vec<UserId> {
    let mut unique: Vec<UserId> = Vec::new();
    for id in ids {
        if !unique.contains(id) {
            unique.push(id.clone());
        }
    }
    unique
}

fn run(text: &str) {
    if let Ok(ids) = parse_resource(text) {
        assert!(
            (1..=MAX_SUBSCRIBED_USERS).contains(&ids.len()),
            "parse_resource({text:?}) gave {} ids",
            ids.len()
        );
        assert_eq!(
            dedup(&ids).len(),
            ids.len(),
            "parse_resource({text:?}) gave duplicates: {ids:?}"
        );
    }
    if let Ok(ids) = parse_filter(text) {
        assert!(
            (1..=MAX_SUBSCRIBED_USERS).contains(&ids.len()),
            "parse_filter({text:?}) gave {} ids",
            ids.len()
        );
        let list = ids
            .iter()
            .map(|id| format!("'{}'", id.as_str().replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(",");
        let filter = format!("id in ({list})");
        assert_eq!(
            parse_filter(&filter).as_ref(),
            Ok(&ids),
            "re-rendered {text:?} as {filter:?}"
        );
        let resource = format!("/communications/presences?$filter={filter}");
        assert_eq!(
            parse_resource(&resource),
            Ok(dedup(&ids)),
            "re-rendered {text:?} as {resource:?}"
        );
        let single = format!("/communications/presences/{}", ids[0].as_str());
        assert_eq!(parse_resource(&single), Ok(vec![ids[0].clone()]), "{single:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(text) => run(text),
        Err(_) => run(&String::from_utf8_lossy(data)),
    }
});
