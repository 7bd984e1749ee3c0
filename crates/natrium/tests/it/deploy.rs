//! The files in deploy/ are checked, not just shipped:
//! - the sample configuration and the Kubernetes ConfigMap's pass `natrium -t`;
//! - the Kubernetes manifests parse (python3 with PyYAML) and have what they promise: a
//!   StatefulSet of one with a volume claim for the store, probes on /healthz, a Service; and
//!   for the cluster, three pods started in parallel, named by their pod, routed to each other
//!   by their stable names, with a disruption budget of one;
//! - the systemd unit passes `systemd-analyze verify` (no warnings either) in a scratch root
//!   holding the unit, the binary and the system's own units, so it needs no running systemd,
//!   and its sandboxing keeps `systemd-analyze security` at an exposure of 2.0 or lower;
//! - the Containerfile runs as a non-root user, exposes the ports, keeps the store on a volume,
//!   health-checks /healthz, and ships the sample configuration.
//!
//! python3/PyYAML and systemd-analyze are skipped with a notice where missing, except under
//! `NATRIUM_REQUIRE_DEPLOY_TOOLS=1` (set by .ci/run), where a missing tool fails.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_natrium");

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// False (and a notice) when `tool` is missing and not required.
fn have(tool: &str, probe: &mut Command) -> bool {
    if probe.output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var_os("NATRIUM_REQUIRE_DEPLOY_TOOLS").is_none(),
        "{tool} is required here (NATRIUM_REQUIRE_DEPLOY_TOOLS) but does not run"
    );
    eprintln!("skipped: {tool} not found");
    false
}

fn config_test(conf: &Path) {
    let out = Command::new(BIN)
        .arg("-t")
        .arg("-c")
        .arg(conf)
        .output()
        .expect("run natrium -t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", conf.display());
    assert!(
        stderr.is_empty(),
        "warnings for {}: {stderr}",
        conf.display()
    );
}

#[test]
fn sample_configuration_loads() {
    config_test(&deploy().join("natrium.conf"));
}

/// The documents of manifest `file` (in deploy/kubernetes) as JSON, via PyYAML.
fn manifest(file: &str) -> Option<Vec<serde_json::Value>> {
    if !have(
        "python3 with PyYAML",
        Command::new("python3").args(["-c", "import yaml"]),
    ) {
        return None;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(deploy().join("kubernetes").join(file))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "YAML does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

#[test]
fn kubernetes_manifest() {
    let Some(docs) = manifest("natrium.yaml") else {
        return;
    };
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    };
    let sts = of("StatefulSet");
    assert_eq!(sts.len(), 1);
    let sts = sts[0];
    assert_eq!(sts["spec"]["replicas"], 1);
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(
        sts["spec"]["selector"]["matchLabels"],
        sts["spec"]["template"]["metadata"]["labels"]
    );
    let c = &pod["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"],
        "/healthz?js-enabled-only=true"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    // The store is on the claim the StatefulSet makes, where the config puts it.
    let claim = &sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"];
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    let store = mounts
        .iter()
        .find(|m| &m["name"] == claim)
        .expect("the claim is mounted");
    assert_eq!(store["mountPath"], "/var/lib/natrium");
    // Services select the pod and name ports it has.
    let ports: Vec<&str> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for svc in of("Service") {
        assert_eq!(
            svc["spec"]["selector"],
            sts["spec"]["template"]["metadata"]["labels"]
        );
        for p in svc["spec"]["ports"].as_array().expect("ports") {
            assert!(ports.contains(&p["targetPort"].as_str().expect("named")));
        }
    }
    // The ConfigMap's configuration is one Natrium loads, with its store on the volume.
    let cm = of("ConfigMap");
    let data = &cm[0]["data"];
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in data.as_object().expect("data") {
        std::fs::write(dir.path().join(name), text.as_str().expect("text")).expect("write");
    }
    let conf = dir.path().join("natrium.conf");
    config_test(&conf);
    let (o, _) = natrium::Options::from_file(&conf).expect("loads");
    assert_eq!(
        o.jetstream.expect("JetStream on").store_dir,
        PathBuf::from("/var/lib/natrium")
    );
    assert_eq!(o.http_port, Some(8222));
    assert!(o.pid_file.is_none(), "the root file system is read-only");
}

#[test]
fn kubernetes_cluster_manifest() {
    let Some(docs) = manifest("natrium-cluster.yaml") else {
        return;
    };
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    };
    let sts = of("StatefulSet")[0];
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let labels = &spec["template"]["metadata"]["labels"];
    let c = &spec["template"]["spec"]["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"],
        "/healthz?js-enabled-only=true"
    );
    assert_eq!(c["env"][0]["name"], "POD_NAME");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The headless service the pods are named under carries the route port.
    let headless = of("Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == spec["serviceName"])
        .expect("the StatefulSet's service");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert!(headless["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| p["port"] == 6222));
    let pdb = of("PodDisruptionBudget")[0];
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *labels);
    // Each pod's configuration loads with its name, and routes to every pod by its stable name.
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in of("ConfigMap")[0]["data"].as_object().expect("data") {
        std::fs::write(dir.path().join(name), text.as_str().expect("text")).expect("write");
    }
    let conf = dir.path().join("natrium.conf");
    let out = Command::new(BIN)
        .args(["-t", "-c"])
        .arg(&conf)
        .env("POD_NAME", "natrium-1")
        .output()
        .expect("run natrium -t");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&conf).expect("read");
    let sts_name = sts["metadata"]["name"].as_str().expect("name");
    let svc = spec["serviceName"].as_str().expect("service");
    for i in 0..3 {
        let route = format!("nats://{sts_name}-{i}.{svc}:6222");
        assert!(text.contains(&route), "routes name {route}");
    }
    assert!(text.contains("server_name: $POD_NAME"));
}

#[test]
fn systemd_unit_verifies() {
    if !have(
        "systemd-analyze",
        Command::new("systemd-analyze").arg("--version"),
    ) {
        return;
    }
    // A root with the unit, the binary where ExecStart has it, kill, and the system's units
    // (for the targets the unit is ordered against).
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    for d in [
        "usr/local/bin",
        "bin",
        "etc/systemd/system",
        "usr/lib/systemd",
    ] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    let bin = r.join("usr/local/bin/natrium");
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).expect("copy binary");
    }
    let kill = ["/bin/kill", "/usr/bin/kill"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("kill(1)");
    std::fs::copy(kill, r.join("bin/kill")).expect("copy kill");
    std::fs::copy(
        deploy().join("systemd/natrium.service"),
        r.join("etc/systemd/system/natrium.service"),
    )
    .expect("copy unit");
    let units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|p| Path::new(p).join("multi-user.target").exists())
        .expect("the system's units");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(units)
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .expect("cp");
    assert!(cp.success());

    let root_arg = format!("--root={}", r.display());
    let out = Command::new("systemd-analyze")
        .args(["verify", &root_arg, "natrium.service"])
        .current_dir(r)
        .output()
        .expect("systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "verify failed: {said}");
    // Unknown keys and bad values are only warnings to verify: none are allowed.
    assert!(said.trim().is_empty(), "verify warned: {said}");

    let out = Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=yes",
            &root_arg,
            "--threshold=20",
            "--no-pager",
            "natrium.service",
        ])
        .current_dir(r)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Overall exposure level"), "{text}");

    let unit = std::fs::read_to_string(deploy().join("systemd/natrium.service")).expect("unit");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=",
        "StateDirectory=natrium",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(unit.contains(line), "{line:?} missing from the unit");
    }
}

#[test]
fn containerfile_shape() {
    let text = std::fs::read_to_string(deploy().join("Containerfile")).expect("Containerfile");
    let from = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert_eq!(from, 2, "a build stage and a runtime stage");
    assert!(text.contains("USER 10001:10001"));
    assert!(text.contains("VOLUME [\"/var/lib/natrium\"]"));
    assert!(text.contains("EXPOSE 4222 6222 7422 8222 8080"));
    assert!(text.contains("HEALTHCHECK") && text.contains("/healthz"));
    // The config it copies is the sample this file's first test loads, and the store it
    // names is the volume.
    assert!(text.contains("deploy/natrium.conf deploy/tenants.conf /etc/natrium/"));
    let (o, _) = natrium::Options::from_file(&deploy().join("natrium.conf")).expect("loads");
    assert_eq!(
        o.jetstream.expect("JetStream on").store_dir,
        PathBuf::from("/var/lib/natrium")
    );
    assert_eq!(o.http_port, Some(8222));
    assert_eq!(o.port, 4222);
    // The build context leaves build outputs out.
    let ignore = std::fs::read_to_string(deploy().join("../.dockerignore")).expect("ignore");
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}
