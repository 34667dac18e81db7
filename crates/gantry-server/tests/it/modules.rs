//! Modules: semantic-version tags pushed to GitLab become versions, served
//! by the registry protocol `tofu init` speaks, as archives of exactly the
//! module's directory at the tag's commit.

use std::io::Read;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Db, TestApp, repo};
use gantry_store::on_both_databases;

on_both_databases!(Db; tags_publish_versions_that_the_registry_serves);

async fn tag(app: &TestApp, repo: &crate::harness::Repo, name: &str, sha: Option<&str>) -> Value {
    let (before, after) = repo.sim.set_tag(repo.project, name, sha).expect("tag");
    let payload = repo
        .sim
        .tag_push_payload(repo.project, name, &before, &after)
        .expect("payload");
    let answers = repo
        .sim
        .deliver(repo.project, "Tag Push Hook", &payload)
        .await;
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    let answer: Value = serde_json::from_str(&answers[0].body).expect("json");
    app.processed("main", answer["delivery"].as_str().expect("id"))
        .await
}

fn outcome(delivery: &Value) -> String {
    delivery["outcome"].as_str().unwrap_or_default().to_owned()
}

async fn tags_publish_versions_that_the_registry_serves(db: Db) {
    let app = TestApp::start(&db).await;
    let repo = repo(&app).await;
    repo.hook(&app).await;
    let sim = &repo.sim;
    let (_, first) = sim
        .commit(
            repo.project,
            "main",
            &[
                ("modules/vpc/main.tf", Some("vpc v1")),
                ("README.md", Some("readme")),
            ],
            "vpc",
        )
        .expect("commit");
    let (status, module) = app
        .post(
            "/api/v1/modules",
            &app.admin,
            json!({ "name": "VPC", "repository": "infra/network", "project_root": "modules/vpc", "provider": "aws" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{module}");
    assert_eq!(module["registry_address"], "gantry.test/root/vpc/aws");
    let (status, bad) = app
        .post(
            "/api/v1/modules",
            &app.admin,
            json!({ "name": "Bad", "repository": "infra/network", "provider": "AWS!" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");

    // Publish, pre-release, non-semver.
    assert!(
        outcome(&tag(&app, &repo, "v1.2.3", Some(&first)).await)
            .contains("published module vpc 1.2.3")
    );
    assert!(
        outcome(&tag(&app, &repo, "v2.0.0-rc.1", Some(&first)).await)
            .contains("published module vpc 2.0.0-rc.1")
    );
    assert!(
        outcome(&tag(&app, &repo, "nightly", Some(&first)).await)
            .contains("not a semantic version")
    );
    // A moved tag never changes a published version.
    let (_, second) = sim
        .commit(
            repo.project,
            "main",
            &[("modules/vpc/main.tf", Some("vpc v2"))],
            "v2",
        )
        .expect("commit");
    let moved = tag(&app, &repo, "v1.2.3", Some(&second)).await;
    assert!(outcome(&moved).contains("never moves"), "{moved}");
    let (_, versions) = app.get("/api/v1/modules/vpc/versions", &app.admin).await;
    let listed: Vec<(String, String, String)> = versions["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap_or_default().to_owned(),
                v["commit_sha"].as_str().unwrap_or_default().to_owned(),
                v["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        listed.contains(&("1.2.3".into(), first.clone(), "published".into())),
        "{versions}"
    );
    assert_eq!(listed.len(), 2, "{versions}");

    // The commit status of the published version.
    app.settle().await;
    let statuses = sim.statuses(repo.project, &first);
    assert!(
        statuses
            .iter()
            .any(|s| s["name"] == "gantry/module/vpc" && s["status"] == "success"),
        "{statuses:?}"
    );

    // The registry: discovery, versions by role, download.
    let http = reqwest::Client::new();
    let discovery: Value = http
        .get(format!("{}/.well-known/terraform.json", app.base))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(discovery, json!({ "modules.v1": "/registry/modules/v1/" }));
    let versions_url = format!("{}/registry/modules/v1/root/vpc/aws/versions", app.base);
    let anonymous = http.get(&versions_url).send().await.expect("versions");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let other = app.space("Other", "root").await;
    let outsider = app
        .key("outsider", json!([{ "space": other, "role": "read" }]))
        .await;
    let refused = http
        .get(&versions_url)
        .bearer_auth(&outsider)
        .send()
        .await
        .expect("versions");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let reader = app
        .key("reader", json!([{ "space": "root", "role": "read" }]))
        .await;
    let listed: Value = http
        .get(&versions_url)
        .bearer_auth(&reader)
        .send()
        .await
        .expect("versions")
        .json()
        .await
        .expect("json");
    let mut names: Vec<&str> = listed["modules"][0]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["1.2.3", "2.0.0-rc.1"]);
    let download = http
        .get(format!(
            "{}/registry/modules/v1/root/vpc/aws/1.2.3/download",
            app.base
        ))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("download");
    assert_eq!(download.status(), StatusCode::NO_CONTENT);
    let link = download.headers()["x-terraform-get"]
        .to_str()
        .expect("link")
        .to_owned();
    assert!(!link.contains(&repo.token), "{link}");
    let link = link.replace("http://gantry.test", &app.base);
    let archive = http.get(&link).send().await.expect("archive");
    assert_eq!(archive.status(), StatusCode::OK);
    let bytes = archive.bytes().await.expect("bytes");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut files = Vec::new();
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        if entry.header().entry_type().is_file() {
            let path = entry.path().expect("path").display().to_string();
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read");
            files.push((path, text));
        }
    }
    assert_eq!(
        files,
        [("main.tf".to_owned(), "vpc v1".to_owned())],
        "only the module's directory, at the tag"
    );
    let forged = http
        .get(link.replace("token=", "token=x"))
        .send()
        .await
        .expect("forged");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    // The web UI lists the module and its versions.
    let mut browser = crate::web::Browser::new(&app);
    browser.sign_in(&reader, "/").await;
    let page = browser.get("/modules/vpc").await;
    assert!(
        page.body.contains("gantry.test/root/vpc/aws") && page.body.contains("2.0.0-rc.1"),
        "{}",
        page.body
    );
    assert!(browser.get("/modules").await.body.contains("/modules/vpc"));

    // A deleted tag yanks its version: kept in the API, gone from the registry.
    let deleted = tag(&app, &repo, "v2.0.0-rc.1", None).await;
    assert!(outcome(&deleted).contains("yanked"), "{deleted}");
    let listed: Value = http
        .get(&versions_url)
        .bearer_auth(&reader)
        .send()
        .await
        .expect("versions")
        .json()
        .await
        .expect("json");
    assert_eq!(
        listed["modules"][0]["versions"],
        json!([{ "version": "1.2.3" }])
    );
    let (_, versions) = app.get("/api/v1/modules/vpc/versions", &app.admin).await;
    assert!(versions.to_string().contains("yanked"), "{versions}");
    app.stop().await;
}
