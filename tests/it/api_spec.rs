//! docs/openapi.json against the running server: every operation it lists is called (with its
//! example body, its path and required query parameters filled in) by a key with every scope,
//! and the answer's status must be one the file documents for it, its body valid against the
//! schema the file gives for that status. What the server serves at `/v1/openapi.json` is the
//! file. (CI also checks the file against the OpenAPI 3.1 schema: scripts/check-openapi.sh.)

use serde_json::{Value, json};

use crate::api::{api_addr, call, new_key, register};
use crate::helpers::Daemon;

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

/// Every operation of the file, called as documented by an admin's key with every scope (on
/// a server with accounts, so that rooms can be moderated), answers as documented, with success.
#[test]
fn the_openapi_file_matches_the_server() {
    let spec: Value = serde_json::from_str(SPEC).expect("docs/openapi.json is JSON");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let env = [
        ("CHATD_AUTH__MODE", "accounts"),
        ("CHATD_AUTH__ARGON2_MEMORY_KIB", "64"),
        ("CHATD_AUTH__ARGON2_ITERATIONS", "1"),
        ("CHATD_STORAGE__PATH", db.to_str().unwrap()),
        ("CHATD_API__LISTEN", "127.0.0.1:0"),
        ("CHATD_API__BURST", "1000"),
        ("CHATD_LIMITS__RATE_PER_SEC", "0"),
    ];
    let d = Daemon::start(&[], &env);
    let api = api_addr(&d);
    add_admin(&env, "root");
    let scopes: Vec<&str> = chatd::api::keys::SCOPES.iter().map(|(s, _)| *s).collect();
    let key = new_key(
        &env,
        &[
            "--name",
            "ops",
            "--user",
            "root",
            "--scopes",
            &scopes.join(","),
        ],
    );
    // Someone to write to, to moderate and, last, to kick.
    let mut henry = register(&d, "henry", "henry's password");
    let r = crate::storage::request(&mut henry, json!({"type": "join", "room": "ops"}));
    assert_eq!(r["type"], "room", "{r}");

    let served = call(api, "GET", "/v1/openapi.json", None, None, &[]);
    assert_eq!(served.body, spec, "the server serves the file");

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
    // Writes first (there is history to page and search, a ban to lift), the kick last.
    let order = |path: &str, method: &str| match method {
        _ if path.ends_with("/kick") => 4,
        "POST" | "PATCH" => 1,
        "GET" => 2,
        _ => 3,
    };
    operations.sort_by_key(|(path, method, _, _)| order(path, method));
    let mut called = 0;
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
        // The examples name someone; here that is henry.
        let body = (!example.is_null()).then(|| example.to_string().replace("mallory", "henry"));
        let secured = op.get("security") != Some(&json!([]));
        let key = secured.then_some(key.as_str());
        let answer = call(api, &method, &url, key, body.as_deref(), &[]);
        let documented = &op["responses"][answer.status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {url}: {} is not documented: {answer:?}",
            answer.status
        );
        assert!(answer.status < 300, "{method} {url}: {answer:?}");
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
    assert_eq!(called, 16, "every operation was called");
}

/// `chatd user add NAME --role admin` on the daemon's store.
fn add_admin(env: &[(&str, &str)], name: &str) {
    use std::io::Write;
    let mut cmd = crate::helpers::chatd_command();
    cmd.args(["user", "add", name, "--role", "admin"])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long admin password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
