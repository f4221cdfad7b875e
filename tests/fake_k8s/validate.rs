//! What the API server checks before it stores a Workflow: the type and namespace of the body,
//! the name (a DNS-1123 subdomain), label keys and values, and (when `../shared/argo` is
//! there) Argo's JSON schema and full CRD schema in strict mode, so an unknown or misspelt
//! field is a `422 Invalid` naming its path, as it would be on a cluster with Argo's full CRDs.

use std::fmt;

use serde_json::{Value, json};

use super::api_error::ApiError;
use super::store::{API_VERSION, KIND};
use crate::ArgoSchemas;

/// At most this many schema errors per schema are reported.
const MAX_SCHEMA_ERRORS: usize = 20;

/// One reason a body is invalid (`Status.details.causes[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: &'static str,
    /// The field path, e.g. `spec.templates[0].container`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Cause {
    /// A `FieldValueInvalid` cause.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: message.into(),
        }
    }

    /// A `FieldValueRequired` cause.
    pub fn required(field: impl Into<String>, message: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: format!("Required value: {}", message.into()),
        }
    }

    /// As `Status.details.causes[]` holds it.
    pub fn to_json(&self) -> Value {
        json!({"reason": self.reason, "message": self.message, "field": self.field})
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The body is an object of this resource's type, in the namespace of the URL (if it names one).
pub fn type_and_namespace(body: &Value, ns: &str) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    let api_version = body["apiVersion"].as_str().unwrap_or_default();
    if api_version != API_VERSION {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({API_VERSION})"
        )));
    }
    let kind = body["kind"].as_str().unwrap_or_default();
    if kind != KIND {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({KIND})"
        )));
    }
    match body["metadata"]["namespace"].as_str() {
        Some(given) if !given.is_empty() && given != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

/// Whether `s` is a DNS-1123 subdomain (lowercase alphanumerics, `-` and `.`, alphanumeric at
/// both ends of each dot-separated part, at most 253 characters).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Problems with `metadata.name`.
pub fn name(name: &str) -> Vec<Cause> {
    if is_dns1123_subdomain(name) {
        return Vec::new();
    }
    vec![Cause::invalid(
        "metadata.name",
        format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case \
             alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
             character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        ),
    )]
}

/// A label name or value part: at most 63 characters, alphanumerics, `-`, `_` and `.`,
/// alphanumeric at both ends.
fn is_label_part(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Problems with `metadata.labels` keys and values.
pub fn labels(object: &Value) -> Vec<Cause> {
    let Some(labels) = object["metadata"]["labels"].as_object() else {
        return Vec::new();
    };
    let mut causes = Vec::new();
    for (k, v) in labels {
        let (prefix, name) = k
            .rsplit_once('/')
            .map_or((None, k.as_str()), |(p, n)| (Some(p), n));
        if !is_label_part(name) || prefix.is_some_and(|p| !is_dns1123_subdomain(p)) {
            causes.push(Cause::invalid(
                "metadata.labels",
                format!(
                    "Invalid value: \"{k}\": name part must consist of alphanumeric characters, \
                     '-', '_' or '.', and must start and end with an alphanumeric character, with \
                     an optional DNS subdomain prefix and '/'"
                ),
            ));
        }
        match v.as_str() {
            Some(value) if value.is_empty() || is_label_part(value) => {}
            _ => causes.push(Cause::invalid(
                format!("metadata.labels.{k}"),
                format!(
                    "Invalid value: {v}: a valid label must be an empty string or consist of \
                     alphanumeric characters, '-', '_' or '.', and must start and end with an \
                     alphanumeric character (at most 63 characters)"
                ),
            )),
        }
    }
    causes
}

/// Errors of `object` against Argo's strict schemas (none when the schemas are absent).
pub fn schema(schemas: Option<&ArgoSchemas>, object: &Value) -> Vec<Cause> {
    let Some(schemas) = schemas else {
        return Vec::new();
    };
    let mut causes: Vec<Cause> = Vec::new();
    for validator in [&schemas.schema_json, &schemas.crd] {
        for error in validator.iter_errors(object).take(MAX_SCHEMA_ERRORS) {
            let cause = Cause::invalid(
                field_path(&error.instance_path().to_string()),
                format!("Invalid value: {}", crate::clip(&error.to_string())),
            );
            if !causes.contains(&cause) {
                causes.push(cause);
            }
        }
    }
    causes
}

/// A JSON pointer (`/spec/templates/0/name`) as Kubernetes writes field paths
/// (`spec.templates[0].name`); the root is `<root>`.
pub fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    if out.is_empty() { "<root>".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["ferry-12", "a", "a.b-c.d", "0abc"] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in ["", "Ferry-12", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn label_checks() {
        let ok = json!({"metadata": {"labels": {"ferry.dev/run-id": "12", "x": ""}}});
        assert!(labels(&ok).is_empty());
        let bad = json!({"metadata": {"labels": {"ferry.dev/ref": "feature/x", "-a": "b"}}});
        assert_eq!(labels(&bad).len(), 2, "{:?}", labels(&bad));
    }

    #[test]
    fn pointers_become_field_paths() {
        assert_eq!(field_path(""), "<root>");
        assert_eq!(
            field_path("/spec/templates/0/container"),
            "spec.templates[0].container"
        );
        assert_eq!(
            field_path("/metadata/labels/ferry.dev~1sha"),
            "metadata.labels.ferry.dev/sha"
        );
    }
}
