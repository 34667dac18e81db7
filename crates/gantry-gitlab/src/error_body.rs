//! GitLab's error bodies: `{"message": "404 Project Not Found"}`,
//! `{"error": "…"}`, or a `message` object of field names to lists of
//! messages (`{"message": {"name": ["has already been taken"]}}`).

use serde_json::Value;

/// The human-readable message of an error body, flattened to one line;
/// `None` when the body holds none.
pub fn message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::new();
    if let Some(message) = value.get("message") {
        flatten("", message, &mut out);
    }
    if out.is_empty()
        && let Some(error) = value.get("error")
    {
        flatten("", error, &mut out);
    }
    let line = out.join("; ");
    (!line.is_empty()).then_some(line)
}

fn flatten(path: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) if path.is_empty() => out.push(text.clone()),
        Value::String(text) => out.push(format!("{path}: {text}")),
        Value::Array(items) => {
            let texts: Vec<String> = items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_owned)
                })
                .collect();
            if path.is_empty() {
                out.push(texts.join(", "));
            } else {
                out.push(format!("{path}: {}", texts.join(", ")));
            }
        }
        Value::Object(fields) => {
            for (name, inner) in fields {
                let nested = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                flatten(&nested, inner, out);
            }
        }
        Value::Null => {}
        other => out.push(if path.is_empty() {
            other.to_string()
        } else {
            format!("{path}: {other}")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::message;

    #[test]
    fn messages_of_every_shape() {
        assert_eq!(
            message(br#"{"message":"401 Unauthorized"}"#).as_deref(),
            Some("401 Unauthorized")
        );
        assert_eq!(
            message(br#"{"error":"insufficient_scope"}"#).as_deref(),
            Some("insufficient_scope")
        );
        assert_eq!(
            message(br#"{"message":{"name":["has already been taken"],"url":["is blocked"]}}"#)
                .as_deref(),
            Some("name: has already been taken; url: is blocked")
        );
        assert_eq!(message(b"<html>502</html>"), None);
        assert_eq!(message(br#"{"message": null}"#), None);
    }
}
