//! No secret in any output: start-up errors and `--help` never show a value that may hold one.

use crate::helpers::run_binary_with_env;

const SECRET: &str = "pw-Zq81x";

/// Runs the binary and checks it wrote `SECRET` nowhere; returns (exit code, stdout, stderr).
fn run_without_leak(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let (code, out, err) = run_binary_with_env(args, envs);
    // Lower case: a URL parser lowercases a scheme, and part of a secret is still a leak.
    let secret = SECRET.to_lowercase();
    assert!(
        !out.to_lowercase().contains(&secret) && !err.to_lowercase().contains(&secret),
        "{args:?} with {envs:?} printed the secret:\nstdout: {out}\nstderr: {err}"
    );
    (code, out, err)
}

/// Exit 2 with one line on stderr that names `flag`.
fn assert_rejected(args: &[&str], envs: &[(&str, &str)], flag: &str) {
    let (code, out, err) = run_without_leak(args, envs);
    assert_eq!(code, Some(2), "{args:?} {envs:?} → {err}");
    assert_eq!(err.lines().count(), 1, "{args:?} {envs:?} → stderr {err:?}");
    assert!(
        err.starts_with("platform: ") && err.contains(flag),
        "{args:?} {envs:?}: the line names {flag}: {err}"
    );
    assert!(out.is_empty());
}

#[test]
fn a_malformed_redis_url_with_a_password_is_rejected_without_echoing_it() {
    let bad = format!("redis://:{SECRET}@");
    assert_rejected(&["users"], &[("REDIS_URL", &bad)], "--redis-url");
    assert_rejected(&["all"], &[("REDIS_URL", &bad)], "--redis-url");
    assert_rejected(&["users", "--redis-url", &bad], &[], "--redis-url");
    assert_rejected(
        &["users", &format!("--redis-url={bad}")],
        &[],
        "--redis-url",
    );
    assert_rejected(
        &["users", "reindex", "--redis-url", &bad],
        &[],
        "--redis-url",
    );
    // A password pasted as the whole URL: the rejected scheme is the secret's start.
    let pasted = format!("{SECRET}:rest@db");
    assert_rejected(&["users", "--redis-url", &pasted], &[], "--redis-url");
}

#[test]
fn a_malformed_users_url_with_credentials_is_rejected_without_echoing_them() {
    let bad = format!("http://user:{SECRET}@");
    assert_rejected(&["gateway"], &[("USER_SERVICE_URL", &bad)], "--users-url");
    assert_rejected(&["gateway", "--users-url", &bad], &[], "--users-url");
    let other_scheme = format!("{SECRET}://user@users:3001");
    assert_rejected(
        &["gateway", "--users-url", &other_scheme],
        &[],
        "--users-url",
    );
}

#[test]
fn a_stray_word_on_the_command_line_is_not_echoed() {
    // An unquoted password with a space in it leaves a stray word behind.
    for args in [
        &["users", "--redis-password", "first", SECRET][..],
        &["gateway", SECRET],
        &[SECRET],
    ] {
        let (code, _, err) = run_without_leak(args, &[]);
        assert_eq!(code, Some(2), "{args:?} → {err}");
        assert_eq!(err.lines().count(), 1, "{args:?} → stderr {err:?}");
    }
    let (code, _, err) = run_without_leak(&["users", &format!("--redis-pasword={SECRET}")], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--redis-pasword"),
        "the unknown flag is named: {err}"
    );
}

#[test]
fn help_names_the_environment_variables_but_never_shows_their_values() {
    let url = format!("redis://:{SECRET}@db:6379");
    let users_url = format!("http://user:{SECRET}@users:3001");
    let envs = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_PASSWORD", SECRET),
        ("USER_SERVICE_URL", users_url.as_str()),
    ];
    for (args, env_name) in [
        (&["users", "--help"][..], "REDIS_URL"),
        (&["all", "--help"], "REDIS_URL"),
        (&["users", "reindex", "--help"], "REDIS_URL"),
        (&["help", "users"], "REDIS_URL"),
        (&["gateway", "--help"], "USER_SERVICE_URL"),
    ] {
        let (code, out, _) = run_without_leak(args, &envs);
        assert_eq!(code, Some(0), "{args:?}");
        assert!(
            out.contains(&format!("[env: {env_name}]")),
            "{args:?} names {env_name}:\n{out}"
        );
    }
}
