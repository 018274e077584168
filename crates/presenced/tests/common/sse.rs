//! A minimal Server-Sent Events client for tests: reads frames as they arrive.
use reqwest::Response;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

pub struct SseStream {
    response: Response,
    buffer: String,
}

impl SseStream {
    pub fn new(response: Response) -> Self {
        assert_eq!(response.status(), 200, "stream answered {}", response.status());
        let ct = response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments and `retry:` skipped); `None` when the stream ended. Panics after
    /// `within` without one.
    pub async fn next_within(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (None, None, None);
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let (Some(event), Some(data)) = (event, data) {
                    return Some(SseEvent { event, id, data });
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("no stream event in time");
            match chunk.expect("stream read failed") {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    pub async fn next(&mut self) -> SseEvent {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("the stream ended")
    }
}
