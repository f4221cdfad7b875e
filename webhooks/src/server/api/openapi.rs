//! The OpenAPI 3.1 document, generated from the route table ([`super::endpoints`]) and the JSON
//! Schemas of the request and answer types (schemars, JSON Schema 2020-12, which OpenAPI 3.1
//! uses as it is). Named types go to `components.schemas` and are referenced from the operations.

use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::types::ErrorBody;
use super::{Access, Content, Endpoint, endpoints};

/// The document (built once).
pub fn document() -> Value {
    static DOCUMENT: LazyLock<Value> = LazyLock::new(build);
    DOCUMENT.clone()
}

fn build() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let mut paths = Map::new();
    for endpoint in endpoints() {
        let op = operation(&endpoint, &mut generator);
        let item = paths
            .entry(endpoint.path)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(endpoint.method.as_str().to_lowercase(), op);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ferry",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Ferry turns git pushes into GPU training pipelines. This API lists, \
                shows, triggers, reruns and cancels runs. Every `/api/v1` route needs a bearer \
                token (`ferry token create`), scoped to one project or admin; reads are open \
                when the server's config says `dashboard_public: true`. Errors are \
                `{\"error\": {\"code\", \"message\", \"details\"}}`.",
        },
        "tags": [
            {"name": "runs", "description": "Runs of pipelines."},
            {"name": "webhooks", "description": "Deliveries from GitLab and GitHub."},
            {"name": "events", "description": "Deliveries whose planning failed, for operators."},
            {"name": "operations", "description": "Probes and metrics."},
            {"name": "meta", "description": "This document."},
        ],
        "paths": paths,
        "components": {
            "schemas": generator.take_definitions(true),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `ferry token create`.",
                },
            },
        },
    })
}

fn operation(e: &Endpoint, generator: &mut SchemaGenerator) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(e.operation_id));
    op.insert("summary".into(), json!(e.summary));
    op.insert("tags".into(), json!([e.tag]));
    let (security, note) = match e.access {
        Access::Open | Access::WebhookSecret => (json!([]), None),
        Access::Write => (json!([{"bearer": []}]), None),
        Access::Read => (
            json!([{"bearer": []}, {}]),
            Some("Needs a token unless the server has `dashboard_public: true`."),
        ),
    };
    op.insert("security".into(), security);
    if e.access == Access::WebhookSecret {
        op.insert(
            "description".into(),
            json!("Verified by the project's webhook secret, not by a token."),
        );
    }
    if let Some(note) = note {
        op.insert("description".into(), json!(note));
    }
    let mut parameters: Vec<Value> = e
        .path_params
        .iter()
        .map(|(name, description)| {
            json!({"name": name, "in": "path", "required": true, "description": description,
                   "schema": {"type": "integer", "minimum": 1}})
        })
        .collect();
    if let Some(query) = e.query {
        parameters.extend(query_parameters(query(generator)));
    }
    if !parameters.is_empty() {
        op.insert("parameters".into(), Value::Array(parameters));
    }
    if let Some(body) = e.body {
        op.insert(
            "requestBody".into(),
            json!({"required": false, "content": content(body, generator)}),
        );
    }
    let mut responses = Map::new();
    for answer in &e.answers {
        responses.insert(
            answer.status.to_string(),
            json!({"description": answer.description,
                   "content": content(answer.content, generator)}),
        );
    }
    let error = generator.subschema_for::<ErrorBody>();
    for status in e.errors {
        responses.insert(
            status.to_string(),
            json!({"description": error_description(*status),
                   "content": {"application/json": {"schema": error}}}),
        );
    }
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

fn content(c: Content, generator: &mut SchemaGenerator) -> Value {
    match c {
        Content::Json(schema) => json!({"application/json": {"schema": schema(generator)}}),
        Content::Text => json!({"text/plain": {"schema": {"type": "string"}}}),
    }
}

/// Each property of an object schema as an optional query parameter.
fn query_parameters(schema: Schema) -> Vec<Value> {
    let value = schema.to_value();
    let Some(Value::Object(properties)) = value.get("properties") else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let mut property = property.clone();
            let description = property
                .as_object_mut()
                .and_then(|p| p.remove("description"))
                .unwrap_or(Value::Null);
            json!({"name": name, "in": "query", "required": false,
                   "description": description, "schema": not_null(property)})
        })
        .collect()
}

/// The schema of an optional field without its `null`: a query parameter is absent, never null.
/// `{"type": ["string", "null"]}` becomes `{"type": "string"}`, `{"anyOf": [X, {"type": "null"}]}`
/// becomes X; a `default` of null goes.
fn not_null(mut schema: Value) -> Value {
    let null = json!({"type": "null"});
    let Some(map) = schema.as_object_mut() else {
        return schema;
    };
    if map.get("default") == Some(&Value::Null) {
        map.remove("default");
    }
    if let Some(Value::Array(types)) = map.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            map.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(any)) = map.get_mut("anyOf") {
        any.retain(|s| *s != null);
        if let [only] = any.as_slice() {
            let only = only.clone();
            map.remove("anyOf");
            if let Value::Object(inner) = only {
                map.extend(inner);
            }
        }
    }
    schema
}

fn error_description(status: u16) -> &'static str {
    match status {
        400 => "The request cannot be read (malformed JSON, a bad query parameter or run id).",
        401 => "No bearer token, or an unknown or revoked one.",
        403 => "The token's scope does not cover the project.",
        404 => "No such run.",
        409 => "The run's state does not allow it.",
        413 => "The body is too large.",
        422 => "The request is wrong: `details` names each problem.",
        502 => "The repository could not be fetched.",
        503 => "The database or the executor cannot be reached.",
        _ => "An error.",
    }
}
