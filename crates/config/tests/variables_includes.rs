//! `$variables` (block scoping, environment fallback, errors) and `include` (relative paths,
//! merging, cycles, depth), plus `parse_file` positions and a realistic nats-server config.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use natrium_config::{
    parse_file, parse_file_with_env, parse_str_with_env, ConfigError, Map, Spanned,
};

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn parse(src: &str) -> Map {
    parse_str_with_env(src, &no_env).unwrap_or_else(|e| panic!("parse failed: {e}\n---\n{src}"))
}

fn at<'a>(m: &'a Map, path: &str) -> &'a Spanned {
    let mut v = None::<&Spanned>;
    for p in path.split('.') {
        let map = match v {
            None => m,
            Some(v) => v.as_map().unwrap_or_else(|| panic!("{p}: not a map")),
        };
        v = Some(
            map.get(p)
                .unwrap_or_else(|| panic!("no key {p} in {map:?}")),
        );
    }
    v.unwrap()
}

fn s<'a>(m: &'a Map, path: &str) -> &'a str {
    at(m, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path}: not a string"))
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, text).unwrap();
}

// ---- variables ----

#[test]
fn variable_from_earlier_key() {
    let m = parse("TOKEN: \"secret\"\nauthorization {\n  token: $TOKEN\n}\n");
    assert_eq!(s(&m, "authorization.token"), "secret");
}

#[test]
fn variables_keep_their_type_and_structure() {
    let m = parse("N: 1MB\nL: [1, 2]\nM { a: b }\nx: $N\ny: $L\nz: $M\n");
    assert_eq!(at(&m, "x").as_i64(), Some(1 << 20));
    assert_eq!(at(&m, "y").as_array().unwrap().len(), 2);
    assert_eq!(s(&m, "z.a"), "b");
}

#[test]
fn innermost_definition_wins() {
    let m = parse(
        "V: outer\na {\n  V: middle\n  b {\n    V: inner\n    x: $V\n  }\n  y: $V\n}\nz: $V\n",
    );
    assert_eq!(s(&m, "a.b.x"), "inner");
    assert_eq!(s(&m, "a.y"), "middle");
    assert_eq!(s(&m, "z"), "outer");
}

#[test]
fn latest_earlier_definition_is_used() {
    let m = parse("V: one\na: $V\nV: two\nb: $V\n");
    assert_eq!(s(&m, "a"), "one");
    assert_eq!(s(&m, "b"), "two");
}

#[test]
fn variables_in_arrays_and_maps_in_arrays() {
    let m =
        parse("U: alice\nP: pw\nusers: [\n  {user: $U, password: $P}\n  $U\n]\nlist: [$U, $P]\n");
    let users = at(&m, "users").as_array().unwrap();
    assert_eq!(
        users[0].as_map().unwrap().get("user").unwrap().as_str(),
        Some("alice")
    );
    assert_eq!(
        users[0].as_map().unwrap().get("password").unwrap().as_str(),
        Some("pw")
    );
    assert_eq!(users[1].as_str(), Some("alice"));
    let list: Vec<&str> = at(&m, "list")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(list, ["alice", "pw"]);
}

#[test]
fn variable_names_are_case_sensitive() {
    let env = env_of(&[("token", "from-env")]);
    let m = parse_str_with_env("TOKEN: defined\na: $token", &env).unwrap();
    assert_eq!(s(&m, "a"), "from-env");
}

#[test]
fn a_later_definition_is_not_visible() {
    let e = parse_str_with_env("a: $LATER\nLATER: 1", &no_env).unwrap_err();
    match e {
        ConfigError::UnknownVariable { pos, name } => {
            assert_eq!(name, "LATER");
            assert_eq!((pos.line, pos.col), (1, 4));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sibling_blocks_do_not_see_each_other() {
    let e = parse_str_with_env("a { V: 1 }\nb { x: $V }", &no_env).unwrap_err();
    assert!(matches!(e, ConfigError::UnknownVariable { .. }), "{e:?}");
}

#[test]
fn environment_fallback() {
    let env = env_of(&[
        ("STR", "hello"),
        ("NUM", "42"),
        ("SIZE", "2MB"),
        ("BOOL", "true"),
        ("MAP", "{ a: 1, b: [x, y] }"),
        ("QUOTED", "\"0123\""),
        ("URL", "nats://h:4222"),
        ("EMPTY", ""),
        ("PADDED", "  7  # comment\n"),
    ]);
    let m = parse_str_with_env(
        "a: $STR\nb: $NUM\nc: $SIZE\nd: $BOOL\ne: $MAP\nf: $QUOTED\ng: $URL\nh: $EMPTY\ni: $PADDED\n\
         arr: [$STR, $NUM]",
        &env,
    )
    .unwrap();
    assert_eq!(s(&m, "a"), "hello");
    assert_eq!(at(&m, "b").as_i64(), Some(42));
    assert_eq!(at(&m, "c").as_i64(), Some(2 << 20));
    assert_eq!(at(&m, "d").as_bool(), Some(true));
    assert_eq!(at(&m, "e.a").as_i64(), Some(1));
    assert_eq!(s(&m, "f"), "0123");
    assert_eq!(s(&m, "g"), "nats://h:4222");
    assert_eq!(s(&m, "h"), "");
    assert_eq!(at(&m, "i").as_i64(), Some(7));
    assert_eq!(at(&m, "arr").as_array().unwrap()[1].as_i64(), Some(42));
    // Everything that came from the environment points at the reference.
    let e = at(&m, "e");
    assert_eq!((e.pos.line, e.pos.col), (5, 4));
    let nested = e.as_map().unwrap().get("b").unwrap().as_array().unwrap();
    assert_eq!((nested[0].pos.line, nested[0].pos.col), (5, 4));
}

#[test]
fn config_definitions_shadow_the_environment() {
    let env = env_of(&[("V", "env")]);
    let m = parse_str_with_env("V: conf\na: $V", &env).unwrap();
    assert_eq!(s(&m, "a"), "conf");
}

#[test]
fn environment_values_may_refer_to_other_environment_variables() {
    let env = env_of(&[("A", "$B"), ("B", "final")]);
    let m = parse_str_with_env("x: $A", &env).unwrap();
    assert_eq!(s(&m, "x"), "final");
}

#[test]
fn self_referencing_environment_variable_is_an_error() {
    let env = env_of(&[("LOOP", "$LOOP"), ("PING", "$PONG"), ("PONG", "[$PING]")]);
    for src in ["x: $LOOP", "x: $PING"] {
        let e = parse_str_with_env(src, &env).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("more than") && text.starts_with("1:4: "),
            "{text}"
        );
    }
}

#[test]
fn malformed_environment_value_is_reported_at_the_reference() {
    let env = env_of(&[("BAD", "\"unterminated"), ("TWO", "a b")]);
    let e = parse_str_with_env("k: 1\nx: $BAD", &env).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("2:4: in the value of environment variable $BAD"),
        "{text}"
    );
    assert!(text.contains("unterminated string"), "{text}");
    let e = parse_str_with_env("x: $TWO", &env).unwrap_err();
    assert!(
        e.to_string().contains("expected the end of the value"),
        "{e}"
    );
}

#[test]
fn unknown_variable_error_names_it() {
    let e = parse_str_with_env("a: 1\nb {\n  c: $NOPE_NOT_SET\n}", &no_env).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("3:6: unknown variable $NOPE_NOT_SET"),
        "{text}"
    );
    let e = parse_str_with_env("a: $", &no_env).unwrap_err();
    assert!(e.to_string().contains("expected a variable name"), "{e}");
    // Names std::env cannot look up are simply unknown.
    let e = parse_str_with_env("a: $X=Y", &no_env).unwrap_err();
    assert!(matches!(e, ConfigError::UnknownVariable { .. }), "{e:?}");
}

#[test]
fn exponential_variable_copies_are_capped() {
    let mut src = String::from("v0: [1, 2, 3, 4, 5, 6, 7, 8]\n");
    for k in 1..12 {
        let refs = vec![format!("$v{}", k - 1); 8].join(", ");
        src.push_str(&format!("v{k}: [{refs}]\n"));
    }
    let e = parse_str_with_env(&src, &no_env).unwrap_err();
    assert!(e.to_string().contains("copy more than"), "{e}");
    // Modest reuse is fine.
    let m = parse("L: [1, 2, 3]\na: $L\nb: [$L, $L]\n");
    assert_eq!(at(&m, "b").as_array().unwrap().len(), 2);
}

#[test]
fn bare_bcrypt_hashes_are_strings() {
    let m =
        parse("p1: $2a$11$W2zko751KUvVy59mUTWmpOdWjpEm5qhcCZRd05GjI/sSOT.xtiHyG\np2: $2b$10$abc");
    assert_eq!(
        s(&m, "p1"),
        "$2a$11$W2zko751KUvVy59mUTWmpOdWjpEm5qhcCZRd05GjI/sSOT.xtiHyG"
    );
    assert_eq!(s(&m, "p2"), "$2b$10$abc");
}

// ---- includes ----

#[test]
fn include_merges_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "main.conf", "a: 1\ninclude inc.conf\nc: 3\n");
    write(dir.path(), "inc.conf", "b: 2\nb2: [x]\n");
    let m = parse_file(&dir.path().join("main.conf")).unwrap();
    let keys: Vec<&str> = m.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["a", "b", "b2", "c"]);
    // Positions name the file each value came from.
    let b = m.get("b").unwrap();
    assert_eq!(b.pos.file.as_deref(), Some(&dir.path().join("inc.conf")));
    assert_eq!((b.pos.line, b.pos.col), (1, 4));
    let a = m.get("a").unwrap();
    assert_eq!(a.pos.file.as_deref(), Some(&dir.path().join("main.conf")));
}

#[test]
fn include_paths_resolve_against_the_including_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "main.conf",
        "listen: 127.0.0.1:4222\nauthorization {\n  include 'includes/users.conf' # from a subdirectory\n  timeout: 0.5\n}\n",
    );
    write(
        dir.path(),
        "includes/users.conf",
        "include ./passwords.conf;\nusers = [\n  {user: alice, password: $ALICE_PASS}\n  {user: bob, password: $BOB_PASS}\n]\n",
    );
    write(
        dir.path(),
        "includes/passwords.conf",
        "ALICE_PASS: $2a$10$UHR6GhotWhpLsKtVP0/i6.Nh9.fuY73cWjLoJjb2sKT8KISBcUW5q\nBOB_PASS: \"bob-pw\"\n",
    );
    let m = parse_file_with_env(&dir.path().join("main.conf"), &no_env).unwrap();
    let users = at(&m, "authorization.users").as_array().unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(
        users[0].as_map().unwrap().get("password").unwrap().as_str(),
        Some("$2a$10$UHR6GhotWhpLsKtVP0/i6.Nh9.fuY73cWjLoJjb2sKT8KISBcUW5q")
    );
    assert_eq!(
        users[1].as_map().unwrap().get("password").unwrap().as_str(),
        Some("bob-pw")
    );
    assert_eq!(at(&m, "authorization.timeout").as_f64(), Some(0.5));
    assert!(at(&m, "authorization.ALICE_PASS").as_str().is_some());
}

#[test]
fn include_forms() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.conf", "a: 1");
    write(dir.path(), "b c.conf", "b: 2");
    write(dir.path(), "d.conf", "d: 4");
    let abs = dir.path().join("d.conf");
    let main = format!(
        "include a.conf\nINCLUDE \"b c.conf\"; x: 0\ninclude   {}\ninclude: not-a-directive\ninclude = also-not\n",
        abs.display()
    );
    write(dir.path(), "main.conf", &main);
    let m = parse_file_with_env(&dir.path().join("main.conf"), &no_env).unwrap();
    assert_eq!(at(&m, "a").as_i64(), Some(1));
    assert_eq!(at(&m, "b").as_i64(), Some(2));
    assert_eq!(at(&m, "d").as_i64(), Some(4));
    assert_eq!(at(&m, "x").as_i64(), Some(0));
    let includes: Vec<&str> = m
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("include"))
        .map(|(_, v)| v.as_str().unwrap())
        .collect();
    assert_eq!(includes, ["not-a-directive", "also-not"]);
}

#[test]
fn json_files_can_be_included_into_blocks() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "foo.json",
        r#"{ "users": [ {"user": "foo"} ] }"#,
    );
    write(
        dir.path(),
        "bar.json",
        "{\n  \"users\": [ {\"user\": \"bar\"} ]\n}\n",
    );
    write(dir.path(), "quux.json", "{}");
    write(
        dir.path(),
        "main.conf",
        "accounts {\n  foo  { include 'foo.json'  }\n  bar  { include bar.json}\n  quux { include \"quux.json\" }\n}\n",
    );
    let m = parse_file(&dir.path().join("main.conf")).unwrap();
    let user = |acc: &str| {
        at(&m, &format!("accounts.{acc}.users")).as_array().unwrap()[0]
            .as_map()
            .unwrap()
            .get("user")
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(user("foo"), "foo");
    assert_eq!(user("bar"), "bar");
    assert!(at(&m, "accounts.quux").as_map().unwrap().is_empty());
}

#[test]
fn included_keys_are_variables_for_later_references_but_not_the_reverse() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "vars.conf", "PASS: from-include");
    write(
        dir.path(),
        "main.conf",
        "include vars.conf\nuser { password: $PASS }\n",
    );
    let m = parse_file_with_env(&dir.path().join("main.conf"), &no_env).unwrap();
    assert_eq!(s(&m, "user.password"), "from-include");

    // nats-server parses an included file on its own: it cannot see the includer's keys.
    write(dir.path(), "uses.conf", "x: $OUTER");
    write(dir.path(), "main2.conf", "OUTER: 1\ninclude uses.conf\n");
    let e = parse_file_with_env(&dir.path().join("main2.conf"), &no_env).unwrap_err();
    assert!(
        matches!(e.root_cause(), ConfigError::UnknownVariable { name, .. } if name == "OUTER"),
        "{e:?}"
    );
}

#[test]
fn parse_str_includes_resolve_against_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "inc.conf", "k: v");
    // Absolute paths work regardless of the current directory.
    let src = format!("include \"{}\"", dir.path().join("inc.conf").display());
    let m = parse(&src);
    assert_eq!(s(&m, "k"), "v");
    // A relative path is looked up in the current directory (the crate directory for tests).
    let e = parse_str_with_env("include surely-missing-natrium.conf", &no_env).unwrap_err();
    match &e {
        ConfigError::Include { path, source, .. } => {
            assert_eq!(path, Path::new("surely-missing-natrium.conf"));
            assert!(matches!(**source, ConfigError::Io { .. }), "{source:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_include_reports_the_directive_position() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "main.conf",
        "a: 1\nm {\n  include nope.conf\n}\n",
    );
    let e = parse_file(&dir.path().join("main.conf")).unwrap_err();
    let pos = e.pos().unwrap();
    assert_eq!((pos.line, pos.col), (3, 3));
    let text = e.to_string();
    assert!(
        text.contains("main.conf:3:3: in file included here: "),
        "{text}"
    );
    assert!(text.contains("nope.conf"), "{text}");
}

#[test]
fn errors_inside_included_files_carry_both_positions() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "main.conf", "include bad.conf\n");
    write(dir.path(), "bad.conf", "ok: 1\nbroken: \"abc\n");
    let e = parse_file(&dir.path().join("main.conf")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("main.conf:1:1: in file included here: "),
        "{text}"
    );
    assert!(text.contains("bad.conf:2:9: unterminated string"), "{text}");
    match e.root_cause() {
        ConfigError::Syntax { pos, .. } => {
            assert!(pos.file.as_ref().unwrap().ends_with("bad.conf"));
            assert_eq!((pos.line, pos.col), (2, 9));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn include_cycles_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.conf", "a: 1\ninclude b.conf\n");
    write(dir.path(), "b.conf", "b: 1\ninclude ./sub/../a.conf\n");
    fs::create_dir_all(dir.path().join("sub")).unwrap();
    let e = parse_file(&dir.path().join("a.conf")).unwrap_err();
    match e.root_cause() {
        ConfigError::IncludeCycle { pos, path } => {
            assert!(path.ends_with("sub/../a.conf"), "{path:?}");
            assert_eq!((pos.line, pos.col), (2, 1));
            assert!(pos.file.as_ref().unwrap().ends_with("b.conf"));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("include cycle"), "{e}");

    write(dir.path(), "self.conf", "include self.conf\n");
    let e = parse_file(&dir.path().join("self.conf")).unwrap_err();
    assert!(
        matches!(e.root_cause(), ConfigError::IncludeCycle { .. }),
        "{e:?}"
    );
}

#[test]
fn including_the_same_file_twice_is_not_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "common.conf", "n: 1");
    write(
        dir.path(),
        "main.conf",
        "a { include common.conf }\nb { include common.conf }\n",
    );
    let m = parse_file(&dir.path().join("main.conf")).unwrap();
    assert_eq!(at(&m, "a.n").as_i64(), Some(1));
    assert_eq!(at(&m, "b.n").as_i64(), Some(1));
}

#[test]
fn include_depth_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let n = natrium_config::MAX_INCLUDE_DEPTH + 2;
    for k in 0..n {
        write(
            dir.path(),
            &format!("f{k}.conf"),
            &format!("k{k}: {k}\ninclude f{}.conf\n", k + 1),
        );
    }
    write(dir.path(), &format!("f{n}.conf"), "end: true");
    let e = parse_file(&dir.path().join("f0.conf")).unwrap_err();
    assert!(
        e.root_cause()
            .to_string()
            .contains("includes are nested more than"),
        "{e}"
    );

    // Exactly MAX_INCLUDE_DEPTH levels work.
    let m = natrium_config::MAX_INCLUDE_DEPTH;
    write(dir.path(), &format!("f{m}.conf"), "end: true");
    let parsed = parse_file(&dir.path().join("f0.conf")).unwrap();
    assert_eq!(parsed.get("end").unwrap().as_bool(), Some(true));
}

#[test]
fn include_of_a_directory_or_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("d")).unwrap();
    write(dir.path(), "main.conf", "include d\n");
    let e = parse_file(&dir.path().join("main.conf")).unwrap_err();
    assert!(matches!(e.root_cause(), ConfigError::Io { .. }), "{e:?}");
    if Path::new("/dev/zero").exists() {
        let e = parse_str_with_env("include /dev/zero", &no_env).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}

#[test]
fn include_without_a_path_is_an_error() {
    for (src, found) in [
        ("include\n", "end of line"),
        ("include ", "end of input"),
        ("include {a: 1}", "'{'"),
        ("include ;", "';'"),
        ("include # c", "'#'"),
    ] {
        let e = parse_str_with_env(src, &no_env).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("expected a file path after 'include'"),
            "{src:?}: {text}"
        );
        assert!(text.ends_with(&format!("found {found}")), "{src:?}: {text}");
    }
    let e = parse_str_with_env("include \"unterminated\n", &no_env).unwrap_err();
    assert!(e.to_string().contains("unterminated include path"), "{e}");
}

#[test]
fn parse_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = parse_file(&dir.path().join("absent.conf")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    assert!(e.pos().is_none());
    assert!(e.to_string().contains("absent.conf"), "{e}");

    fs::write(dir.path().join("latin1.conf"), b"a: 1\nname: caf\xe9\n").unwrap();
    let e = parse_file(&dir.path().join("latin1.conf")).unwrap_err();
    let pos = e.pos().unwrap();
    assert_eq!((pos.line, pos.col), (2, 10));
    assert!(
        e.to_string().contains("latin1.conf:2:10: invalid UTF-8"),
        "{e}"
    );

    write(dir.path(), "syntax.conf", "a: 1\nb: [\n");
    let e = parse_file(&dir.path().join("syntax.conf")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("syntax.conf:3:1: expected ']' to close the array opened at 2:4"),
        "{text}"
    );
}

// ---- a realistic configuration ----

const REALISTIC: &str = r#"
# Natrium / nats-server configuration
server_name: n1-east
listen: 0.0.0.0:4222
http: 8222
max_payload: 1MB
max_connections: 64K
ping_interval: "2m"
write_deadline: 10s
debug: false
trace: off
logtime: yes

jetstream {
  store_dir: /var/lib/nats/js
  max_mem: 1G
  max_file: 10GB
  domain: east
}

# Pulled from the environment in production.
ADMIN_PASS: "$2a$11$W2zko751KUvVy59mUTWmpOdWjpEm5qhcCZRd05GjI/sSOT.xtiHyG"

authorization {
  timeout: 2
  users = [
    {user: admin, password: $ADMIN_PASS}
    {user: "svc", password: "$2a$11$a", permissions: {
        publish: ["svc.>", "_INBOX.>"]
        subscribe: { allow: ["svc.>"], deny: ["svc.secret"] }
    }}
  ]
}

accounts {
  A: {
    jetstream: enabled
    users: [
      {user: a1, password: pa1}
      {nkey: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4}
    ]
    exports: [ {stream: "a.events.>"}, {service: "a.req"} ]
  }
  B {
    users = [ {user: b1, password: pb1} ]
    imports = [ {stream: {account: A, subject: "a.events.>"}, prefix: from_a} ]
  }
  $SYS { users: [ {user: sys, password: sys} ] }
}
system_account: $SYS_ACCOUNT_NAME

cluster {
  name: east
  listen: 0.0.0.0:6222
  routes = [
    nats-route://n2:6222
    nats-route://n3:6222
  ]
  authorization { user: route, password: rpw, timeout: 0.75 }
}

tls {
  cert_file: "./certs/server.pem"
  key_file:  "./certs/server-key.pem"
  ca_file:   './certs/ca.pem'
  verify:    true
  timeout:   2
}
"#;

#[test]
fn realistic_nats_server_config() {
    let env = env_of(&[("SYS_ACCOUNT_NAME", "SYS")]);
    let m = parse_str_with_env(REALISTIC, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s(&m, "server_name"), "n1-east");
    assert_eq!(s(&m, "listen"), "0.0.0.0:4222");
    assert_eq!(at(&m, "http").as_i64(), Some(8222));
    assert_eq!(at(&m, "max_payload").as_i64(), Some(1 << 20));
    assert_eq!(at(&m, "max_connections").as_i64(), Some(64_000));
    assert_eq!(
        natrium_config::parse_duration(s(&m, "ping_interval")),
        Some(std::time::Duration::from_secs(120))
    );
    assert_eq!(
        natrium_config::parse_duration(s(&m, "write_deadline")),
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(at(&m, "debug").as_bool(), Some(false));
    assert_eq!(at(&m, "trace").as_bool(), Some(false));
    assert_eq!(at(&m, "logtime").as_bool(), Some(true));

    assert_eq!(s(&m, "jetstream.store_dir"), "/var/lib/nats/js");
    assert_eq!(at(&m, "jetstream.max_mem").as_i64(), Some(1_000_000_000));
    assert_eq!(at(&m, "jetstream.max_file").as_i64(), Some(10 << 30));

    let users = at(&m, "authorization.users").as_array().unwrap();
    assert_eq!(users.len(), 2);
    let admin = users[0].as_map().unwrap();
    assert_eq!(
        admin.get("password").unwrap().as_str(),
        Some("$2a$11$W2zko751KUvVy59mUTWmpOdWjpEm5qhcCZRd05GjI/sSOT.xtiHyG")
    );
    let perms = users[1]
        .as_map()
        .unwrap()
        .get("permissions")
        .unwrap()
        .as_map()
        .unwrap();
    assert_eq!(perms.get("publish").unwrap().as_array().unwrap().len(), 2);
    let deny = perms
        .get("subscribe")
        .unwrap()
        .as_map()
        .unwrap()
        .get("deny")
        .unwrap();
    assert_eq!(deny.as_array().unwrap()[0].as_str(), Some("svc.secret"));

    let accounts = at(&m, "accounts").as_map().unwrap();
    let names: Vec<&str> = accounts.iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["A", "B", "$SYS"]);
    assert_eq!(s(&m, "accounts.A.jetstream"), "enabled");
    assert_eq!(at(&m, "accounts.A.users").as_array().unwrap().len(), 2);
    let import = &at(&m, "accounts.B.imports").as_array().unwrap()[0];
    let stream = import
        .as_map()
        .unwrap()
        .get("stream")
        .unwrap()
        .as_map()
        .unwrap();
    assert_eq!(stream.get("account").unwrap().as_str(), Some("A"));
    assert_eq!(s(&m, "system_account"), "SYS");

    assert_eq!(s(&m, "cluster.name"), "east");
    let routes: Vec<&str> = at(&m, "cluster.routes")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(routes, ["nats-route://n2:6222", "nats-route://n3:6222"]);
    assert_eq!(at(&m, "cluster.authorization.timeout").as_f64(), Some(0.75));

    assert_eq!(s(&m, "tls.cert_file"), "./certs/server.pem");
    assert_eq!(s(&m, "tls.ca_file"), "./certs/ca.pem");
    assert_eq!(at(&m, "tls.verify").as_bool(), Some(true));
}
