//! Syntax of nats-server configuration text: separators, keys, comments, strings, numbers,
//! booleans, maps, arrays, duplicates, and the errors (with positions) for malformed input.

use natrium_config::{parse_str, parse_str_with_env, ConfigError, Map, Pos, Spanned, Value};

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(src: &str) -> Map {
    parse_str_with_env(src, &no_env).unwrap_or_else(|e| panic!("parse failed: {e}\n---\n{src}"))
}

fn parse_err(src: &str) -> ConfigError {
    match parse_str_with_env(src, &no_env) {
        Ok(m) => panic!("expected an error, parsed {m:?}\n---\n{src}"),
        Err(e) => e,
    }
}

/// The value at a dotted path of keys.
fn at<'a>(m: &'a Map, path: &str) -> &'a Spanned {
    let mut parts = path.split('.');
    let first = parts.next().unwrap();
    let mut v = m
        .get(first)
        .unwrap_or_else(|| panic!("no key {first} in {m:?}"));
    for p in parts {
        v = v
            .as_map()
            .unwrap_or_else(|| panic!("{p}: not a map"))
            .get(p)
            .unwrap_or_else(|| panic!("no key {p}"));
    }
    v
}

fn s<'a>(m: &'a Map, path: &str) -> &'a str {
    at(m, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {:?}", at(m, path)))
}

fn i(m: &Map, path: &str) -> i64 {
    at(m, path)
        .as_i64()
        .unwrap_or_else(|| panic!("{path} is not an integer: {:?}", at(m, path)))
}

fn b(m: &Map, path: &str) -> bool {
    at(m, path)
        .as_bool()
        .unwrap_or_else(|| panic!("{path} is not a bool: {:?}", at(m, path)))
}

/// The error's message and "line:col".
fn msg_at(e: &ConfigError) -> (String, String) {
    match e {
        ConfigError::Syntax { pos, msg } => (msg.clone(), format!("{}:{}", pos.line, pos.col)),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn key_value_separators() {
    let m = parse("a = 1\nb: 2\nc 3\nd=4\ne:5\nf\t6\n  g   =   7  \n");
    for (k, v) in [
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("d", 4),
        ("e", 5),
        ("f", 6),
        ("g", 7),
    ] {
        assert_eq!(i(&m, k), v, "{k}");
    }
    assert_eq!(m.len(), 7);
}

#[test]
fn entry_terminators() {
    let m = parse("a: 1, b: 2; c: 3;\nd: x;e: y,\n");
    assert_eq!(i(&m, "a"), 1);
    assert_eq!(i(&m, "b"), 2);
    assert_eq!(i(&m, "c"), 3);
    assert_eq!(s(&m, "d"), "x");
    assert_eq!(s(&m, "e"), "y");
    let m = parse("m { a: 1, b: 2; c: 3 }");
    assert_eq!(i(&m, "m.c"), 3);
    // Empty entries between separators are harmless.
    assert_eq!(parse("a: 1;;\n;b: 2").len(), 2);
}

#[test]
fn map_follows_key_directly() {
    let m = parse("auth {\n user: a\n}\nother{x: 1}\nthird = { y: 2 }\nfourth: {z: 3}");
    assert_eq!(s(&m, "auth.user"), "a");
    assert_eq!(i(&m, "other.x"), 1);
    assert_eq!(i(&m, "third.y"), 2);
    assert_eq!(i(&m, "fourth.z"), 3);
}

#[test]
fn value_may_follow_a_bare_key_on_a_later_line() {
    // nats-server's lexer skips line ends between a key and a separator-less value.
    let m = parse("authorization\n{\n  user: a\n}\n");
    assert_eq!(s(&m, "authorization.user"), "a");
}

#[test]
fn keys_bare_and_quoted() {
    let m = parse(
        "foo.bar-baz_1 = 1\n\"quoted key\": 2\n'single key' = 3\n$SYS { users = [] }\nA$B: 4\n\"a:b=c\" 5",
    );
    assert_eq!(m.get("foo.bar-baz_1").and_then(Spanned::as_i64), Some(1));
    assert_eq!(m.get("quoted key").and_then(Spanned::as_i64), Some(2));
    assert_eq!(m.get("single key").and_then(Spanned::as_i64), Some(3));
    assert!(m.get("$SYS").is_some());
    assert_eq!(m.get("A$B").and_then(Spanned::as_i64), Some(4));
    assert_eq!(m.get("a:b=c").and_then(Spanned::as_i64), Some(5));
    let keys: Vec<&str> = m.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "foo.bar-baz_1",
            "quoted key",
            "single key",
            "$SYS",
            "A$B",
            "a:b=c"
        ]
    );
}

#[test]
fn comments() {
    let m = parse(
        "# leading comment\n// another\na: 1 # trailing\nb: 2 // trailing\nc: nats://h:4222 # url keeps its //\n\
         d: x#y\nm {\n  # inside\n  e: 3 // after\n  // last\n}\narr: [\n  1 # one\n  // between\n  2\n]\n# end",
    );
    assert_eq!(i(&m, "a"), 1);
    assert_eq!(i(&m, "b"), 2);
    assert_eq!(s(&m, "c"), "nats://h:4222");
    assert_eq!(s(&m, "d"), "x#y");
    assert_eq!(i(&m, "m.e"), 3);
    let arr = at(&m, "arr").as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(m.len(), 6);
    assert!(parse("# only a comment").is_empty());
    assert!(parse("").is_empty());
    assert!(parse("  \n\t\r\n").is_empty());
}

#[test]
fn nested_maps() {
    let m = parse("a { b { c { d: deep } } }");
    assert_eq!(s(&m, "a.b.c.d"), "deep");
    assert_eq!(at(&m, "a.b").kind_name(), "map");
}

#[test]
fn arrays() {
    let m = parse(
        "a: [1, 2, 3]\nb: [\n  x\n  y\n]\nc: [1, 2,]\nd: []\ne: [[1, 2], [3]]\nf: [\"q\", 'r', s, 1.5, true]\n\
         g [ {user: a, password: p}\n  {user: b}\n]\nh: [ a,\n b ,\n c ]",
    );
    let ints = |path: &str| -> Vec<i64> {
        at(&m, path)
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    assert_eq!(ints("a"), [1, 2, 3]);
    assert_eq!(ints("c"), [1, 2]);
    assert!(at(&m, "d").as_array().unwrap().is_empty());
    let b: Vec<&str> = at(&m, "b")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(b, ["x", "y"]);
    let e = at(&m, "e").as_array().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].as_array().unwrap().len(), 2);
    let f = at(&m, "f").as_array().unwrap();
    let kinds: Vec<&str> = f.iter().map(Spanned::kind_name).collect();
    assert_eq!(kinds, ["string", "string", "string", "float", "boolean"]);
    let g = at(&m, "g").as_array().unwrap();
    assert_eq!(g.len(), 2);
    assert_eq!(
        g[0].as_map().unwrap().get("password").unwrap().as_str(),
        Some("p")
    );
    assert_eq!(
        g[1].as_map().unwrap().get("user").unwrap().as_str(),
        Some("b")
    );
    assert_eq!(at(&m, "h").as_array().unwrap().len(), 3);
}

#[test]
fn array_elements_end_at_bracket_after_numbers() {
    let m = parse("a: [1]\nb: [1k,2MB]\nc: [x]");
    assert_eq!(at(&m, "a").as_array().unwrap()[0].as_i64(), Some(1));
    let b = at(&m, "b").as_array().unwrap();
    assert_eq!(b[0].as_i64(), Some(1000));
    assert_eq!(b[1].as_i64(), Some(2 * 1024 * 1024));
    assert_eq!(at(&m, "c").as_array().unwrap()[0].as_str(), Some("x"));
}

#[test]
fn double_quoted_strings_and_escapes() {
    let m = parse(
        r##"a: "hello world"
b: "tab\there\nnl \"q\" back\\slash \r"
c: "\u00e9\u263a"
d: "\x41\x42"
e: ""
f: "multi
line"
g: "# not a comment // nor this"
h: "123"
t: "true"
v: "$NOT_A_VAR"
"##,
    );
    assert_eq!(s(&m, "a"), "hello world");
    assert_eq!(s(&m, "b"), "tab\there\nnl \"q\" back\\slash \r");
    assert_eq!(s(&m, "c"), "é☺");
    assert_eq!(s(&m, "d"), "AB");
    assert_eq!(s(&m, "e"), "");
    assert_eq!(s(&m, "f"), "multi\nline");
    assert_eq!(s(&m, "g"), "# not a comment // nor this");
    assert_eq!(s(&m, "h"), "123");
    assert_eq!(s(&m, "t"), "true");
    assert_eq!(s(&m, "v"), "$NOT_A_VAR");
}

#[test]
fn single_quoted_strings_are_raw() {
    let m = parse(r#"a: 'C:\path\to\n' ; b: 'say \"hi\"'"#);
    assert_eq!(s(&m, "a"), r"C:\path\to\n");
    assert_eq!(s(&m, "b"), r#"say \"hi\""#);
}

#[test]
fn bare_strings() {
    let m = parse(
        "host: 0.0.0.0\nlisten: 127.0.0.1:4222\nurl: nats://a:4222\nlevel: debug\nwait: 500ms\n\
         span: 2m30s\nip: 1.2.3.4\ntoken: 3secret\nsubj: foo.*.>\npath: /var/lib/nats\n\
         eq: a=b:c\nunicode: héllo\nneg: -abc\nwhen: 2016-05-04T18:53:41Z\nesc: a\\tb\n",
    );
    assert_eq!(s(&m, "host"), "0.0.0.0");
    assert_eq!(s(&m, "listen"), "127.0.0.1:4222");
    assert_eq!(s(&m, "url"), "nats://a:4222");
    assert_eq!(s(&m, "level"), "debug");
    assert_eq!(s(&m, "wait"), "500ms");
    assert_eq!(s(&m, "span"), "2m30s");
    assert_eq!(s(&m, "ip"), "1.2.3.4");
    assert_eq!(s(&m, "token"), "3secret");
    assert_eq!(s(&m, "subj"), "foo.*.>");
    assert_eq!(s(&m, "path"), "/var/lib/nats");
    assert_eq!(s(&m, "eq"), "a=b:c");
    assert_eq!(s(&m, "unicode"), "héllo");
    assert_eq!(s(&m, "neg"), "-abc");
    assert_eq!(s(&m, "when"), "2016-05-04T18:53:41Z");
    // nats-server decodes escapes in bare strings too.
    assert_eq!(s(&m, "esc"), "a\tb");
}

#[test]
fn bare_strings_end_at_terminators() {
    let m = parse("a: x,b: y;c: {d: z}\ne: [p,q]");
    assert_eq!(s(&m, "a"), "x");
    assert_eq!(s(&m, "b"), "y");
    assert_eq!(s(&m, "c.d"), "z");
    assert_eq!(at(&m, "e").as_array().unwrap()[1].as_str(), Some("q"));
}

#[test]
fn block_strings() {
    let m =
        parse("numbers (\n1234567890\n)\nafter: 1\nnested (\n  12(34)56\n  (\n    7890\n  )\n)\n");
    assert_eq!(s(&m, "numbers"), "\n1234567890\n");
    assert_eq!(s(&m, "nested"), "\n  12(34)56\n  (\n    7890\n  )\n");
    assert_eq!(i(&m, "after"), 1);
    let m = parse("k: (\nlast\n)");
    assert_eq!(s(&m, "k"), "\nlast\n");
    let (msg, pos) = msg_at(&parse_err("k: (\nnever closed\n  )\n"));
    assert!(msg.contains("unterminated block string"), "{msg}");
    assert_eq!(pos, "1:4");
}

#[test]
fn booleans() {
    let m = parse(
        "a: true\nb: false\nc: yes\nd: no\ne: on\nf: off\ng: TRUE\nh: Off\nj: YES\nk: \"yes\"\nl: truer",
    );
    for k in ["a", "c", "e", "g", "j"] {
        assert!(b(&m, k), "{k}");
    }
    for k in ["b", "d", "f", "h"] {
        assert!(!b(&m, k), "{k}");
    }
    assert_eq!(s(&m, "k"), "yes");
    assert_eq!(s(&m, "l"), "truer");
}

#[test]
fn numbers_and_sizes() {
    let m = parse(
        "port: 4222\nneg: -1\nzero: 0\nf: 1.5\nnf: -0.5\nk: 1k\nkb: 1KB\nm: 2m\nmb: 2MB\nmib: 2MiB\n\
         g: 1G\ngb: 1gb\nt: 1T\ntb: 1TB\nbig: 9223372036854775807\nneg_size: -2k\n",
    );
    assert_eq!(i(&m, "port"), 4222);
    assert_eq!(i(&m, "neg"), -1);
    assert_eq!(i(&m, "zero"), 0);
    assert_eq!(at(&m, "f").as_f64(), Some(1.5));
    assert_eq!(at(&m, "f").kind_name(), "float");
    assert_eq!(at(&m, "nf").as_f64(), Some(-0.5));
    assert_eq!(i(&m, "k"), 1000);
    assert_eq!(i(&m, "kb"), 1024);
    assert_eq!(i(&m, "m"), 2_000_000);
    assert_eq!(i(&m, "mb"), 2 * 1024 * 1024);
    assert_eq!(i(&m, "mib"), 2 * 1024 * 1024);
    assert_eq!(i(&m, "g"), 1_000_000_000);
    assert_eq!(i(&m, "gb"), 1 << 30);
    assert_eq!(i(&m, "t"), 1_000_000_000_000);
    assert_eq!(i(&m, "tb"), 1 << 40);
    assert_eq!(i(&m, "big"), i64::MAX);
    assert_eq!(i(&m, "neg_size"), -2000);
    // An integer widens to a float on request, not the other way round.
    assert_eq!(at(&m, "port").as_f64(), Some(4222.0));
    assert_eq!(at(&m, "f").as_i64(), None);
}

#[test]
fn out_of_range_numbers_are_errors() {
    let (msg, pos) = msg_at(&parse_err("a: 1\nbig: 9223372036854775808"));
    assert!(msg.contains("out of range"), "{msg}");
    assert_eq!(pos, "2:6");
    let (msg, _) = msg_at(&parse_err("x: 9EB"));
    assert!(msg.contains("out of range"), "{msg}");
}

#[test]
fn duplicate_keys_later_wins() {
    let m = parse("a: 1\nb: x\nA: 2\nb: y\n");
    assert_eq!(
        i(&m, "a"),
        2,
        "get is case-insensitive and returns the last"
    );
    assert_eq!(s(&m, "b"), "y");
    assert_eq!(m.len(), 4, "every entry is kept");
    assert_eq!(m.get_exact("a").and_then(Spanned::as_i64), Some(1));
    assert_eq!(m.get_exact("A").and_then(Spanned::as_i64), Some(2));
    assert_eq!(m.get_exact("B"), None);
    let unique: Vec<(&str, String)> = m
        .iter_unique()
        .map(|(k, v)| (k, format!("{:?}", v.value)))
        .collect();
    assert_eq!(
        unique,
        [
            ("A", "Integer(2)".to_string()),
            ("b", "String(\"y\")".to_string())
        ]
    );
}

#[test]
fn case_insensitive_get() {
    let m = parse("Server_Name: n1\nJetStream { Max_Mem: 1G }");
    assert_eq!(s(&m, "server_name"), "n1");
    assert_eq!(s(&m, "SERVER_NAME"), "n1");
    assert_eq!(i(&m, "jetstream.max_mem"), 1_000_000_000);
    assert!(m.get("server-name").is_none());
}

#[test]
fn positions_of_values_and_keys() {
    let src = "a: 1\n  b = \"two\"\nm {\n  c: [x, $a]\n}\n";
    let m = parse(src);
    assert_eq!(at(&m, "a").pos, Pos::new(1, 4));
    assert_eq!(at(&m, "b").pos, Pos::new(2, 7));
    assert_eq!(m.key_pos("b"), Some(&Pos::new(2, 3)));
    assert_eq!(at(&m, "m").pos, Pos::new(3, 3));
    let c = at(&m, "m.c");
    assert_eq!(c.pos, Pos::new(4, 6));
    let arr = c.as_array().unwrap();
    assert_eq!(arr[0].pos, Pos::new(4, 7));
    assert_eq!(
        arr[1].pos,
        Pos::new(4, 10),
        "a variable takes its reference's position"
    );
    let entries: Vec<(&str, String)> = m.entries().map(|(k, p, _)| (k, p.to_string())).collect();
    assert_eq!(
        entries,
        [
            ("a", "1:1".into()),
            ("b", "2:3".into()),
            ("m", "3:1".into())
        ]
    );
    // Columns count characters, not bytes.
    let m = parse("ключ: значение\nx: 1");
    assert_eq!(m.get("ключ").unwrap().pos, Pos::new(1, 7));
}

#[test]
fn crlf_line_endings() {
    let m = parse("a: 1\r\nb: two\r\nc {\r\n  d: [1,\r\n 2]\r\n}\r\n");
    assert_eq!(i(&m, "a"), 1);
    assert_eq!(s(&m, "b"), "two");
    assert_eq!(at(&m, "c.d").as_array().unwrap().len(), 2);
    assert_eq!(at(&m, "b").pos, Pos::new(2, 4));
}

#[test]
fn byte_order_mark_is_skipped() {
    let m = parse("\u{feff}a: 1");
    assert_eq!(i(&m, "a"), 1);
}

#[test]
fn json_documents_parse() {
    let m = parse(
        r#"{
  "server_name": "n1",
  "port": 4222,
  "jetstream": {"max_mem": 1024, "enabled": true},
  "routes": ["nats://a:6222", "nats://b:6222"],
  "accounts": {"A": {"users": [{"user": "u", "password": "p"}]}}
}"#,
    );
    assert_eq!(s(&m, "server_name"), "n1");
    assert_eq!(i(&m, "port"), 4222);
    assert_eq!(i(&m, "jetstream.max_mem"), 1024);
    assert!(b(&m, "jetstream.enabled"));
    assert_eq!(at(&m, "routes").as_array().unwrap().len(), 2);
    assert_eq!(at(&m, "accounts.A.users").as_array().unwrap().len(), 1);
}

#[test]
fn nats_server_compatibility_cases() {
    // Stray closing braces at the very end are tolerated, as nats-server does.
    let m = parse("accounts { users = [{}]}\n}\n");
    assert_eq!(at(&m, "accounts.users").as_array().unwrap().len(), 1);
    assert!(parse("a: 1 }} # trailing\n").get("a").is_some());
    // Top-level blocks, nested and with comments around them.
    let m = parse("\n{\n  {\n    listen: 0.0.0.0:4222 // c\n  }\n  # w1\n}\n# w2\n");
    assert_eq!(s(&m, "listen"), "0.0.0.0:4222");
    assert!(parse("{}").is_empty());
    assert!(parse("\n{\n}\n").is_empty());
    // JSON-ish maps with a trailing comma and a missing one.
    let m = parse(
        "{\n \"jetstream\": {\n  \"store_dir\": \"/tmp/nats\"\n  \"max_mem\": 1000000,\n },\n \"port\": 4222\n}\n",
    );
    assert_eq!(i(&m, "jetstream.max_mem"), 1_000_000);
    assert_eq!(s(&m, "jetstream.store_dir"), "/tmp/nats");
    assert_eq!(i(&m, "port"), 4222);
    // Capitalised booleans in JSON-like blocks.
    let m = parse("{\n  \"debug\":   False\n  \"prof_port\": 8221\n}");
    assert!(!b(&m, "debug"));
    // Keys without values are invalid, however they are separated.
    for src in ["aaaa", "   aaaa   ", "# c\n  aaaa\n", "a,a,a"] {
        let (msg, _) = msg_at(&parse_err(src));
        assert!(
            msg.starts_with("expected a value for key 'a"),
            "{src:?}: {msg}"
        );
    }
    // The nats-server test suite's size table.
    let m = parse(
        "k = 8k\nkb = 4kb\nki = 3ki\nkib = 4ki\nm = 1m\nmb = 2MB\nmi = 2Mi\nmib = 64MiB\ng = 2g\n\
         gb = 22GB\ngi = 22Gi\ngib = 22GiB\ntb = 22TB\nti = 22Ti\ntib = 22TiB\npb = 22PB\npi = 22Pi\npib = 22PiB\n",
    );
    let k: i64 = 1024;
    for (key, v) in [
        ("k", 8000),
        ("kb", 4 * k),
        ("ki", 3 * k),
        ("kib", 4 * k),
        ("m", 1_000_000),
        ("mb", 2 * k * k),
        ("mi", 2 * k * k),
        ("mib", 64 * k * k),
        ("g", 2_000_000_000),
        ("gb", 22 * k * k * k),
        ("gi", 22 * k * k * k),
        ("gib", 22 * k * k * k),
        ("tb", 22 * k.pow(4)),
        ("ti", 22 * k.pow(4)),
        ("tib", 22 * k.pow(4)),
        ("pb", 22 * k.pow(5)),
        ("pi", 22 * k.pow(5)),
        ("pib", 22 * k.pow(5)),
    ] {
        assert_eq!(i(&m, key), v, "{key}");
    }
    // A digit-led token with a size letter but more after it is a string.
    assert_eq!(s(&parse("foo = 3Gyz"), "foo"), "3Gyz");
}

#[test]
fn value_helpers_and_kind_names() {
    let m = parse("s: x\ni: 1\nf: 1.5\nb: on\na: [1]\nm {}");
    let kinds: Vec<&str> = m.iter().map(|(_, v)| v.value.kind_name()).collect();
    assert_eq!(
        kinds,
        ["string", "integer", "float", "boolean", "array", "map"]
    );
    assert_eq!(at(&m, "s").as_str(), Some("x"));
    assert_eq!(at(&m, "s").as_i64(), None);
    assert_eq!(at(&m, "i").as_bool(), None);
    assert_eq!(at(&m, "b").as_bool(), Some(true));
    assert!(at(&m, "m").as_map().unwrap().is_empty());
    assert!(at(&m, "m").as_array().is_none());
    assert_eq!(
        at(&m, "a").value,
        Value::Array(vec![Spanned::new(Value::Integer(1), Pos::new(5, 5))])
    );
}

#[test]
fn pos_display() {
    assert_eq!(Pos::new(3, 7).to_string(), "3:7");
    let p = Pos {
        file: Some(std::sync::Arc::new("/etc/nats.conf".into())),
        line: 2,
        col: 1,
    };
    assert_eq!(p.to_string(), "/etc/nats.conf:2:1");
}

// ---- errors ----

#[test]
fn error_unterminated_string() {
    let e = parse_err("a: 1\nb: \"abc\n\nc: 2\n");
    let (msg, pos) = msg_at(&e);
    assert!(msg.contains("unterminated string"), "{msg}");
    assert_eq!(pos, "2:4");
    assert_eq!(e.to_string(), format!("2:4: {msg}"));
    let (msg, pos) = msg_at(&parse_err("a: 'abc"));
    assert!(msg.contains("unterminated string"), "{msg}");
    assert_eq!(pos, "1:4");
    let (msg, pos) = msg_at(&parse_err("\"key: 1\n"));
    assert!(msg.contains("unterminated quoted key"), "{msg}");
    assert_eq!(pos, "1:1");
}

#[test]
fn error_unclosed_map_names_where_it_opened() {
    let (msg, pos) = msg_at(&parse_err(
        "a: 1\nb: 2\nc: {\n  d: 1\n  e {\n    f: 2\n  }\n",
    ));
    assert_eq!(
        msg,
        "expected '}' to close the map opened at 3:4, found end of input"
    );
    assert_eq!(pos, "8:1");
    let (msg, _) = msg_at(&parse_err("x {\n  y: 1\n"));
    assert!(msg.contains("opened at 1:3"), "{msg}");
}

#[test]
fn error_unclosed_array() {
    let (msg, pos) = msg_at(&parse_err("a: [1, 2,\n  3\n"));
    assert_eq!(
        msg,
        "expected ']' to close the array opened at 1:4, found end of input"
    );
    assert_eq!(pos, "3:1");
    let (msg, _) = msg_at(&parse_err("a: [1 2]"));
    assert!(msg.contains("expected ',' or ']'"), "{msg}");
    let (msg, pos) = msg_at(&parse_err("a: [1,,2]"));
    assert!(msg.contains("found ','"), "{msg}");
    assert_eq!(pos, "1:7");
    let (msg, _) = msg_at(&parse_err("a: [,]"));
    assert!(msg.contains("found ','"), "{msg}");
    let (msg, _) = msg_at(&parse_err("a: [1}"));
    assert!(msg.contains("expected ',' or ']'"), "{msg}");
}

#[test]
fn error_missing_value() {
    for (src, at_, found) in [
        ("a:", "1:3", "end of input"),
        ("a:\nb: 1", "1:3", "end of line"),
        ("a = # comment\n", "1:5", "a comment"),
        ("m { a }", "1:7", "'}'"),
        ("a;", "1:2", "';'"),
        ("lonely", "1:7", "end of input"),
    ] {
        let (msg, pos) = msg_at(&parse_err(src));
        assert!(msg.starts_with("expected a value"), "{src:?}: {msg}");
        assert!(msg.ends_with(&format!("found {found}")), "{src:?}: {msg}");
        assert_eq!(pos, at_, "{src:?}");
    }
    let (msg, _) = msg_at(&parse_err("port:\n"));
    assert!(msg.contains("after ':' for key 'port'"), "{msg}");
}

#[test]
fn error_text_after_value() {
    let (msg, pos) = msg_at(&parse_err("a: 1 b: 2"));
    assert_eq!(
        msg,
        "expected a line end, ',' or ';' after the value of 'a', found 'b'"
    );
    assert_eq!(pos, "1:6");
    let (msg, _) = msg_at(&parse_err("a: \"x\"y"));
    assert!(msg.contains("found 'y'"), "{msg}");
    let (msg, _) = msg_at(&parse_err("a: {b: 1} c: 2"));
    assert!(msg.contains("after the value of 'a'"), "{msg}");
}

#[test]
fn error_stray_brackets_and_separators() {
    let (msg, pos) = msg_at(&parse_err("a: 1\n}\nb: 2"));
    assert!(msg.contains("unexpected '}'"), "{msg}");
    assert_eq!(pos, "2:1");
    let (msg, _) = msg_at(&parse_err("]"));
    assert!(msg.contains("expected a key, found ']'"), "{msg}");
    let (msg, _) = msg_at(&parse_err("= 1"));
    assert!(msg.contains("expected a key, found '='"), "{msg}");
    let (msg, _) = msg_at(&parse_err("m { [1] }"));
    assert!(msg.contains("expected a key, found '['"), "{msg}");
}

#[test]
fn error_bad_escapes() {
    let (msg, pos) = msg_at(&parse_err(r#"a: "x\qy""#));
    assert!(msg.contains(r"invalid escape '\q'"), "{msg}");
    assert_eq!(pos, "1:6");
    let (msg, _) = msg_at(&parse_err(r#"a: "\x4""#));
    assert!(msg.contains("two hexadecimal digits"), "{msg}");
    let (msg, _) = msg_at(&parse_err(r#"a: "\ud800""#));
    assert!(msg.contains("four hexadecimal digits"), "{msg}");
    let (msg, _) = msg_at(&parse_err(r#"a: "\xff""#));
    assert!(msg.contains("UTF-8"), "{msg}");
    let (msg, _) = msg_at(&parse_err("a: C:\\dir"));
    assert!(msg.contains(r"invalid escape '\d'"), "{msg}");
    let (msg, _) = msg_at(&parse_err("a: x\\"));
    assert!(msg.contains("end of input"), "{msg}");
}

#[test]
fn nesting_limit() {
    let depth = natrium_config::MAX_DEPTH;
    let ok = format!("{}{}", "a {".repeat(depth), "}".repeat(depth));
    parse(&ok);
    let too_deep = format!("{}{}", "a {".repeat(depth + 1), "}".repeat(depth + 1));
    let (msg, _) = msg_at(&parse_err(&too_deep));
    assert!(msg.contains("nesting is deeper than"), "{msg}");
    let arrays = format!("a: {}{}", "[".repeat(depth), "]".repeat(depth));
    parse(&arrays);
    // Far beyond the limit: an error, not a stack overflow.
    let (msg, _) = msg_at(&parse_err(&format!("a: {}", "[".repeat(1_000_000))));
    assert!(msg.contains("nesting is deeper than"), "{msg}");
    let (msg, _) = msg_at(&parse_err(&"{".repeat(1_000_000)));
    assert!(msg.contains("nesting is deeper than"), "{msg}");
}

#[test]
fn real_process_environment_is_the_default() {
    std::env::set_var("NATRIUM_CONFIG_TEST_ENV_DEFAULT", "from-env");
    let m = parse_str("a: $NATRIUM_CONFIG_TEST_ENV_DEFAULT").unwrap();
    assert_eq!(s(&m, "a"), "from-env");
    let e = parse_str("a: $NATRIUM_CONFIG_TEST_SURELY_UNSET_12345").unwrap_err();
    assert!(matches!(e, ConfigError::UnknownVariable { .. }), "{e:?}");
}
