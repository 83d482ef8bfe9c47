//! docs/openapi.json against the running server: every operation it lists is called (with its
//! example body, its path and required query parameters filled in) by a key with every scope,
//! and the answer's status must be one the file documents for it, its body valid against the
//! schema the file gives for that status. What the server serves at `/v1/openapi.json` is the
//! file. (CI also checks the file against the OpenAPI 3.1 schema: scripts/check-openapi.sh.)

use serde_json::{Value, json};

use crate::api::{api_addr, call, new_key};
use crate::helpers::Daemon;
use crate::storage::hello;

const SPEC: &str = include_str!("../../docs/openapi.json");

/// Checks `value` against `schema` (the subset of JSON Schema the file uses: `$ref`, `type`,
/// `required`, `properties`, `additionalProperties: false`, `items`, `enum`, `const`).
fn check(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return check(spec, &spec["components"]["schemas"][name], value, at);
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if !schema["const"].is_null() && &schema["const"] != value {
        return Err(format!("{at}: {value} is not {}", schema["const"]));
    }
    let fits = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !fits {
        return Err(format!("{at}: {value} is not a {}", schema["type"]));
    }
    if let Some(object) = value.as_object() {
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap();
            if !object.contains_key(field) {
                return Err(format!("{at}: `{field}` is missing from {value}"));
            }
        }
        for (field, inner) in object {
            match schema["properties"].get(field) {
                Some(s) => check(spec, s, inner, &format!("{at}.{field}"))?,
                None if schema["additionalProperties"] == json!(false) => {
                    return Err(format!("{at}: `{field}` is not in the schema"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check(spec, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Every operation of the file, called as documented, answers as documented.
#[test]
fn the_openapi_file_matches_the_server() {
    let spec: Value = serde_json::from_str(SPEC).expect("docs/openapi.json is JSON");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let env = [
        ("CHATD_STORAGE__PATH", db.to_str().unwrap()),
        ("CHATD_API__LISTEN", "127.0.0.1:0"),
        ("CHATD_API__BURST", "1000"),
        ("CHATD_LIMITS__RATE_PER_SEC", "0"),
    ];
    let d = Daemon::start(&[], &env);
    let api = api_addr(&d);
    let scopes: Vec<&str> = chatd::api::keys::SCOPES.iter().map(|(s, _)| *s).collect();
    let key = new_key(
        &env,
        &["--name", "everything", "--scopes", &scopes.join(",")],
    );
    // Someone to write to, and to kick (a key of an open-mode server is a user: a kick or an
    // announce is refused as the file says, 403).
    let (_henry, w) = hello(&d, "henry", json!({"room": "ops"}));
    assert_eq!(w["type"], "welcome");

    let served = call(api, "GET", "/v1/openapi.json", None, None, &[]);
    assert_eq!(served.body, spec, "the server serves the file");

    let mut called = 0;
    // POSTs first, so there is history to page and search.
    let mut operations = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method != "parameters" {
                operations.push((
                    path.clone(),
                    method.to_uppercase(),
                    op.clone(),
                    item.clone(),
                ));
            }
        }
    }
    operations.sort_by_key(|(_, method, _, _)| method != "POST");
    for (path, method, op, item) in operations {
        let mut url = path.replace("{room}", "ops").replace("{name}", "henry");
        let parameters = op["parameters"]
            .as_array()
            .into_iter()
            .chain(item["parameters"].as_array())
            .flatten();
        let required: Vec<String> = parameters
            .filter(|p| p["in"] == "query" && p["required"] == json!(true))
            .map(|p| format!("{}=deploy", p["name"].as_str().unwrap()))
            .collect();
        if !required.is_empty() {
            url = format!("{url}?{}", required.join("&"));
        }
        let example = &op["requestBody"]["content"]["application/json"]["example"];
        let body = (!example.is_null()).then(|| example.to_string());
        let secured = op.get("security") != Some(&json!([]));
        let answer = call(
            api,
            &method,
            &url,
            secured.then_some(key.as_str()),
            body.as_deref(),
            &[],
        );
        let documented = &op["responses"][answer.status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {url}: {} is not documented: {answer:?}",
            answer.status
        );
        // Everything succeeds but what needs an admin (this key's user is not one).
        let needs_admin = path.ends_with("/kick") || path.ends_with("/announce");
        assert_eq!(
            answer.status < 300,
            !needs_admin,
            "{method} {url}: {answer:?}"
        );
        let schema = &documented["content"]["application/json"]["schema"];
        if let Err(e) = check(&spec, schema, &answer.body, &format!("{method} {path}")) {
            panic!("{e}");
        }
        // Without a key: 401, as documented, with the error's shape.
        if secured {
            let refused = call(api, &method, &url, None, body.as_deref(), &[]);
            assert_eq!(refused.status, 401, "{method} {url}");
            let schema = &op["responses"]["401"]["content"]["application/json"]["schema"];
            check(
                &spec,
                schema,
                &refused.body,
                &format!("{method} {path} 401"),
            )
            .unwrap();
        }
        called += 1;
    }
    assert_eq!(called, 9, "every operation was called");
}
