//! The web UI over plain HTTP, as a browser without JavaScript uses it:
//! sign-in with a session cookie, `?next=`, CSRF on every form, the same
//! roles as the API, embedded assets. The browser tests are in `browser`.

use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, LOCATION, SET_COOKIE};
use serde_json::json;

use crate::execution::{shell_run, wait_for};
use crate::harness::{Db, TestApp, repo};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    signing_in_returns_to_the_page_and_forms_need_the_csrf_token,
    pages_show_what_the_roles_allow,
    sessions_on_https_are_secure_and_end_with_their_key,
);

/// A browser without JavaScript: it keeps cookies and does not follow
/// redirects, so each one can be checked.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
}

pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
    pub set_cookies: Vec<String>,
}

impl Browser {
    pub fn new(app: &TestApp) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: app.base.clone(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let response = request
            .header("cookie", self.cookie_header())
            .header("accept", "text/html")
            .send()
            .await
            .expect("request");
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let set_cookies: Vec<String> = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        for set in &set_cookies {
            let pair = set.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                self.cookies.retain(|(n, _)| n != name);
                if !value.is_empty() {
                    self.cookies.push((name.to_owned(), value.to_owned()));
                }
            }
        }
        let body = response.text().await.expect("body");
        Page {
            status,
            location,
            body,
            set_cookies,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(request).await
    }

    /// Signs in with `key` through the form, as a person does.
    pub async fn sign_in(&mut self, key: &str, next: &str) -> Page {
        let form = self.get(&format!("/login?next={next}")).await;
        let token = hidden(&form.body, "login_csrf");
        let next = hidden(&form.body, "next");
        self.post(
            "/login",
            &[("api_key", key), ("next", &next), ("login_csrf", &token)],
        )
        .await
    }
}

/// The value of the hidden input `name` of a page.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).map(|i| i + marker.len());
    let start = start.unwrap_or_else(|| panic!("no {name} in {html}"));
    let escaped = html[start..].split('"').next().unwrap_or("");
    escaped
        .replace("&#x2f;", "/")
        .replace("&#47;", "/")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

async fn signing_in_returns_to_the_page_and_forms_need_the_csrf_token(db: Db) {
    let app = TestApp::start_with_workers(&db, 1).await;
    let _repo = repo(&app).await;
    let plan = "echo 'Plan: 1 to add, 0 to change, 0 to destroy.'; exit 2";
    let run = shell_run(&app, "Net", plan, json!({})).await;
    wait_for(&app, &run, "unconfirmed").await;
    let mut browser = Browser::new(&app);

    // Without a session: to the sign-in form, which returns to the page.
    let path = format!("/runs/{run}");
    let page = browser.get(&path).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let next = format!("%2Fruns%2F{run}");
    assert_eq!(page.location, Some(format!("/login?next={next}")));

    // A wrong key, or a form without its token, signs nobody in.
    let form = browser.get(&format!("/login?next={next}")).await;
    assert!(
        form.body.contains("name=\"api_key\" type=\"password\""),
        "{}",
        form.body
    );
    let token = hidden(&form.body, "login_csrf");
    let wrong = browser
        .post(
            "/login",
            &[
                ("api_key", "gantry_nope"),
                ("next", &path),
                ("login_csrf", &token),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("unknown or revoked"), "{}", wrong.body);
    let forged = browser
        .post(
            "/login",
            &[
                ("api_key", &app.admin),
                ("next", &path),
                ("login_csrf", "forged"),
            ],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let signed_in = browser.sign_in(&app.admin, &next).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    assert_eq!(signed_in.location.as_deref(), Some(path.as_str()));
    let session = signed_in
        .set_cookies
        .iter()
        .find(|c| c.starts_with("gantry_session="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(flag), "{session}");
    }
    assert!(!session.contains("Secure"), "plain http: {session}");
    // The database holds the session's hash, never its secret.
    let secret = session
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, value)| value.to_owned())
        .expect("value");
    let mut conn = app.store().conn().await.expect("conn");
    let stored: Vec<(String,)> = sqlx::query_as("SELECT id FROM web_sessions")
        .fetch_all(&mut *conn)
        .await
        .expect("sessions");
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].0.contains(&secret) && stored[0].0.len() == 64);
    drop(conn);

    // The run page, with the buttons that are legal now.
    let shown = browser.get(&path).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(
        shown.body.contains("unconfirmed") && shown.body.contains("1 to add"),
        "{}",
        shown.body
    );
    assert!(
        shown
            .body
            .contains(&format!("action=\"/runs/{run}/confirm\""))
    );
    assert!(
        shown
            .body
            .contains(&format!("action=\"/runs/{run}/discard\""))
    );
    assert!(
        !shown
            .body
            .contains(&format!("action=\"/runs/{run}/cancel\""))
    );

    // A POST without the CSRF token, or with another, changes nothing.
    let confirm = format!("/runs/{run}/confirm");
    for form in [vec![], vec![("csrf_token", "0000")]] {
        let refused = browser.post(&confirm, &form).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
        assert!(refused.body.contains("CSRF"), "{}", refused.body);
    }
    let (_, still) = app.get(&format!("/api/v1/runs/{run}"), &app.admin).await;
    assert_eq!(still["state"], "unconfirmed");
    let csrf = hidden(&shown.body, "csrf_token");
    let confirmed = browser.post(&confirm, &[("csrf_token", &csrf)]).await;
    assert_eq!(
        confirmed.status,
        StatusCode::SEE_OTHER,
        "{}",
        confirmed.body
    );
    assert_eq!(confirmed.location.as_deref(), Some(path.as_str()));
    wait_for(&app, &run, "finished").await;
    let (_, audit) = app.get("/api/v1/audit", &app.admin).await;
    assert!(
        audit.to_string().contains("run.confirm"),
        "audited as the API does: {audit}"
    );

    // `next` never leads off the server.
    for evil in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let encoded: String = url_encode(evil);
        let mut other = Browser::new(&app);
        let page = other.sign_in(&app.admin, &encoded).await;
        assert_eq!(page.location.as_deref(), Some("/"), "{evil}");
    }

    // Assets have hashed names and are cached for a year.
    let css = shown
        .body
        .split("href=\"")
        .find_map(|part| part.split('"').next().filter(|u| u.ends_with(".css")))
        .expect("stylesheet")
        .to_owned();
    assert!(css.starts_with("/assets/app.") && css.len() > "/assets/app..css".len());
    let response = reqwest::get(format!("{}{css}", app.base))
        .await
        .expect("css");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[CACHE_CONTROL]
            .to_str()
            .is_ok_and(|v| v.contains("immutable")),
    );

    // Signing out ends the session on the server.
    let signed_out = browser.post("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(signed_out.location.as_deref(), Some("/login"));
    let after = browser.get(&path).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    app.stop().await;
}

fn url_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn pages_show_what_the_roles_allow(db: Db) {
    let app = TestApp::start(&db).await;
    let repo = repo(&app).await;
    let (status, _) = app
        .patch(
            "/api/v1/integrations/gitlab/main",
            &app.admin,
            json!({ "description": "# Main GitLab\n\n<script>alert('x')</script>\n\nSee **bold**." }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let reader = app
        .key("reader", json!([{ "space": "root", "role": "read" }]))
        .await;
    let (_, shown) = app
        .get("/api/v1/integrations/gitlab/main", &app.admin)
        .await;
    let secret = shown["webhook_secret"].as_str().expect("secret").to_owned();

    let mut admin = Browser::new(&app);
    admin.sign_in(&app.admin, "/").await;
    let details = admin.get("/integrations/main").await;
    assert_eq!(details.status, StatusCode::OK);
    assert!(details.body.contains(&secret), "admins see the secret");
    assert!(details.body.contains("Push events") && details.body.contains("Merge request events"));
    assert!(
        details.body.contains("<h1>Main GitLab</h1>"),
        "{}",
        details.body
    );
    assert!(details.body.contains("<strong>bold</strong>"));
    assert!(
        !details.body.contains("<script>alert"),
        "raw HTML is text: {}",
        details.body
    );
    assert!(details.body.contains("&lt;script&gt;"));
    let csp = reqwest::get(format!("{}/login", app.base))
        .await
        .expect("login");
    assert!(
        csp.headers()["content-security-policy"]
            .to_str()
            .is_ok_and(|v| v.contains("script-src 'self'")),
    );

    let mut read_only = Browser::new(&app);
    read_only.sign_in(&reader, "/").await;
    let details = read_only.get("/integrations/main").await;
    assert_eq!(details.status, StatusCode::OK);
    assert!(
        !details.body.contains(&secret),
        "a reader never sees the secret"
    );
    assert!(!details.body.contains("Rotate secret"));
    let list = read_only.get("/integrations").await;
    assert!(list.body.contains("Main") && !list.body.contains("Set up integration"));
    // A reader's form post is refused by the API's own role check.
    let csrf = hidden(&details.body, "csrf_token");
    let refused = read_only
        .post("/integrations/main/rotate", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("admin"), "{}", refused.body);
    let (_, unchanged) = app
        .get("/api/v1/integrations/gitlab/main", &app.admin)
        .await;
    assert_eq!(unchanged["webhook_secret"], secret.as_str());

    // An unknown page is an HTML 404 for a browser, JSON for a program.
    let missing = read_only.get("/nowhere").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("<h1>404"), "{}", missing.body);
    let _ = repo;
    app.stop().await;
}

async fn sessions_on_https_are_secure_and_end_with_their_key(db: Db) {
    let app = TestApp::start_configured(&db, |config| {
        config.public_url = "https://gantry.example.com".into();
    })
    .await;
    let key = app
        .key("operator", json!([{ "space": "root", "role": "read" }]))
        .await;
    let mut browser = Browser::new(&app);
    let signed_in = browser.sign_in(&key, "/stacks").await;
    let session = signed_in
        .set_cookies
        .iter()
        .find(|c| c.starts_with("gantry_session="))
        .expect("a session cookie");
    assert!(session.contains("Secure"), "{session}");
    assert_eq!(browser.get("/stacks").await.status, StatusCode::OK);

    // Revoking the key ends its sessions at once.
    let (_, keys) = app.get("/api/v1/api-keys", &app.admin).await;
    let id = keys["items"]
        .as_array()
        .and_then(|items| items.iter().find(|k| k["name"] == "operator"))
        .and_then(|k| k["id"].as_str())
        .expect("the key")
        .to_owned();
    let (status, _) = app
        .delete(&format!("/api/v1/api-keys/{id}"), &app.admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    let after = browser.get("/stacks").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.location.as_deref(), Some("/login?next=%2Fstacks"));
    app.stop().await;
}
