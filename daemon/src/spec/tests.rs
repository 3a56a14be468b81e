use super::*;
use proptest::prelude::*;

#[test]
fn image_references() {
    let good = [
        "busybox",
        "berth-test/tiny:latest",
        "quay.io/jupyter/base-notebook:2025-01-01",
        "localhost:5000/a/b_c__d-e.f:v1.2",
        "127.0.0.1:5000/x",
        "a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "registry.example.org/team/img:tag@sha256:0123456789abcdef0123456789abcdef",
    ];
    for g in good {
        assert!(check_image(g).is_ok(), "{g} should be valid");
    }
    let bad = [
        "",
        "UPPER/case",
        "a b",
        "img:",
        "img:-tag",
        "-lead",
        "trail-",
        "a//b",
        "a@sha256:short",
        "a@nohash",
        "host:abc/img",
        "img:tag:more",
        "a..b",
    ];
    for b in bad {
        let err = check_image(b).expect_err(b);
        assert_eq!(err.field, "image", "{b}");
    }
}

#[test]
fn image_references_normalise_as_docker_resolves_them() {
    let h = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let cases = [
        ("ubuntu", "docker.io/library/ubuntu:latest".to_owned()),
        ("ubuntu:22.04", "docker.io/library/ubuntu:22.04".to_owned()),
        (
            "library/ubuntu",
            "docker.io/library/ubuntu:latest".to_owned(),
        ),
        (
            "docker.io/ubuntu",
            "docker.io/library/ubuntu:latest".to_owned(),
        ),
        (
            "index.docker.io/ubuntu",
            "docker.io/library/ubuntu:latest".to_owned(),
        ),
        (
            "jupyter/base-notebook",
            "docker.io/jupyter/base-notebook:latest".to_owned(),
        ),
        ("quay.io/jupyter/x:1", "quay.io/jupyter/x:1".to_owned()),
        ("localhost/x", "localhost/x:latest".to_owned()),
        ("localhost:5000/x", "localhost:5000/x:latest".to_owned()),
        ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000/a/b:t".to_owned()),
        (
            "evil.example/ubuntu",
            "evil.example/ubuntu:latest".to_owned(),
        ),
        // An image id prefix is a repository name to Docker's parser: full, it cannot be an id.
        ("deadbeef", "docker.io/library/deadbeef:latest".to_owned()),
        (&*format!("a@{h}"), format!("docker.io/library/a@{h}")),
        (&*format!("a:t@{h}"), format!("docker.io/library/a:t@{h}")),
    ];
    for (given, want) in cases {
        assert!(check_image(given).is_ok(), "{given}");
        assert_eq!(normalize_image(given), want, "{given}");
        // Normalising is idempotent: a full reference stays as it is.
        assert_eq!(normalize_image(&want), want, "{want}");
    }
    let globs = [
        ("*", "*"),
        ("ubuntu", "docker.io/library/ubuntu:latest"),
        ("ubuntu*", "docker.io/library/ubuntu*"),
        ("jupyter/*", "docker.io/jupyter/*"),
        ("docker.io/library/*", "docker.io/library/*"),
        ("index.docker.io/library/*", "docker.io/library/*"),
        ("quay.io/jupyter/*", "quay.io/jupyter/*"),
        ("localhost:5000/*", "localhost:5000/*"),
        ("*/jupyter/*", "*/jupyter/*"),
    ];
    for (glob, want) in globs {
        assert_eq!(normalize_image_glob(glob), want, "{glob}");
    }
}

#[test]
fn resources_refuse_bad_numbers_naming_the_field() {
    let cases: [(i64, i64, f64, f64, &str); 8] = [
        (-1, 0, 0.0, 0.0, "resources.mem_limit_bytes"),
        (0, -5, 0.0, 0.0, "resources.mem_guarantee_bytes"),
        (1024, 0, 0.0, 0.0, "resources.mem_limit_bytes"),
        (i64::MAX, 0, 0.0, 0.0, "resources.mem_limit_bytes"),
        (0, 0, -1.0, 0.0, "resources.cpu_limit"),
        (0, 0, f64::NAN, 0.0, "resources.cpu_limit"),
        (0, 0, 1e9, 0.0, "resources.cpu_limit"),
        (0, 0, 1.0, 2.0, "resources.cpu_guarantee"),
    ];
    for (ml, mg, cl, cg, field) in cases {
        let err = Resources::new(ml, mg, cl, cg).expect_err(field);
        assert_eq!(err.field, field);
    }
    let mib = 1024 * 1024;
    let err = Resources::new(64 * mib, 128 * mib, 0.0, 0.0).expect_err("guarantee > limit");
    assert_eq!(err.field, "resources.mem_guarantee_bytes");
    let ok = Resources::new(64 * mib, 32 * mib, 0.5, 0.25).expect("valid");
    assert_eq!(ok.mem_limit, Some(64 * 1024 * 1024));
    assert_eq!(ok.cpu_guarantee, Some(0.25));
    assert_eq!(
        Resources::new(0, 0, 0.0, 0.0).expect("unset"),
        Resources::default()
    );
}

#[test]
fn env_keys_are_checked_and_values_never_shown() {
    for bad in ["", "A=B", "A B", "A\0", "\n"] {
        let err = Env::new([(bad.to_owned(), "v".to_owned())]).expect_err(bad);
        assert!(err.field.starts_with("env"), "{err}");
    }
    let err = Env::new([("A".to_owned(), "x\0y".to_owned())]).expect_err("NUL value");
    assert_eq!(err.field, "env[A]");
    let big = "x".repeat(MAX_VALUE_BYTES);
    let many = (0..20).map(|i| (format!("K{i}"), big.clone()));
    assert_eq!(Env::new(many).expect_err("too big").field, "env");

    let env =
        Env::new([("JUPYTERHUB_API_TOKEN".to_owned(), "s3cr3t".to_owned())]).expect("valid env");
    assert!(!format!("{env:?}").contains("s3cr3t"));
    assert_eq!(env.to_docker(), vec!["JUPYTERHUB_API_TOKEN=s3cr3t"]);
}

#[test]
fn volumes_expand_templates_and_refuse_host_paths() {
    let key = ServerKey::new("Ann", "lab").expect("valid key");
    let v = VolumeSpec::new(0, &key, "home-{user}-{server}", "/home/jovyan", false)
        .expect("valid volume");
    assert_eq!(v.name, "home--41nn-lab");
    let host = VolumeSpec::new(0, &key, "/srv/data", "/data", true).expect("host path parses");
    assert!(host.host_path && host.name == "/srv/data");
    let cases = [
        ("/srv/../etc", "/x", "volumes[0].source"),
        ("../x", "/x", "volumes[0].source"),
        ("a b", "/x", "volumes[0].source"),
        ("", "/x", "volumes[0].source"),
        ("ok", "relative", "volumes[0].target"),
        ("ok", "/a/../b", "volumes[0].target"),
    ];
    for (src, tgt, field) in cases {
        let err = VolumeSpec::new(0, &key, src, tgt, false).expect_err(src);
        assert_eq!(err.field, field, "{src} {tgt}");
    }
    let long = format!("{}{{user}}", "v".repeat(251));
    let err = VolumeSpec::new(0, &key, &long, "/x", false).expect_err("too long");
    assert_eq!(err.field, "volumes[0].source");
}

#[test]
fn small_checks() {
    assert_eq!(port(0), Ok(DEFAULT_PORT));
    assert_eq!(port(65535), Ok(65535));
    assert_eq!(port(65536).expect_err("range").field, "port");
    assert_eq!(ready_path("").as_deref(), Ok("/"));
    assert_eq!(ready_path("x").expect_err("relative").field, "ready_path");
    assert_eq!(ready_path("/a b").expect_err("space").field, "ready_path");
    assert!(check_spawn_id("abc-1").is_ok());
    assert_eq!(check_spawn_id("").expect_err("empty").field, "spawn_id");
    assert_eq!(check_spawn_id("a b").expect_err("space").field, "spawn_id");
    let mut labels = BTreeMap::new();
    labels.insert("berth.node".to_owned(), "x".to_owned());
    assert_eq!(
        check_labels(&labels).expect_err("reserved").field,
        "labels[berth.node]"
    );
    assert_eq!(
        check_argv("args", &["a\0".to_owned()])
            .expect_err("nul")
            .field,
        "args[0]"
    );
}

proptest! {
    #[test]
    fn validators_never_panic(s in "\\PC{0,80}", n in any::<i64>(), f in any::<f64>(), p in any::<u32>()) {
        let _ = check_image(&s);
        let _ = Resources::new(n, n / 2, f, f / 2.0);
        let _ = Env::new([(s.clone(), s.clone())]);
        let _ = ready_path(&s);
        let _ = port(p);
        let _ = check_spawn_id(&s);
        if let Ok(key) = ServerKey::new("u", "") {
            let _ = VolumeSpec::new(0, &key, &s, &s, false);
        }
    }

    #[test]
    fn spec_hash_ignores_env_values(v1 in "[a-z]{1,10}", v2 in "[a-z]{1,10}") {
        let mk = |v: &str| StartSpec {
            env: Env::new([("TOKEN".to_owned(), v.to_owned())]).expect("valid"),
            ..StartSpec::plain("u", "img")
        };
        prop_assert_eq!(mk(&v1).spec_hash(), mk(&v2).spec_hash());
    }
}

#[test]
fn internal_ssl_files_go_together_as_pem_and_debug_hides_the_key() {
    let pem = |s: &str| format!("-----BEGIN {s}-----\nAAAA\n-----END {s}-----\n").into_bytes();
    assert_eq!(crate::spec::Certs::new(vec![], vec![], vec![]), Ok(None));
    let ok = crate::spec::Certs::new(pem("PRIVATE KEY"), pem("CERTIFICATE"), pem("CERTIFICATE"))
        .expect("valid")
        .expect("some");
    assert!(!format!("{ok:?}").contains("AAAA"));
    for (key, cert, ca, field) in [
        (
            pem("PRIVATE KEY"),
            vec![],
            pem("CERTIFICATE"),
            "internal_ssl.cert",
        ),
        (
            b"not pem".to_vec(),
            pem("CERTIFICATE"),
            pem("CERTIFICATE"),
            "internal_ssl.key",
        ),
        (
            pem("PRIVATE KEY"),
            pem("CERTIFICATE"),
            vec![b'x'; 70_000],
            "internal_ssl.ca",
        ),
    ] {
        let e = crate::spec::Certs::new(key, cert, ca).expect_err(field);
        assert_eq!(e.field, field);
    }
}
