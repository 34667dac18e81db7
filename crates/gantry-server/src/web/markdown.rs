//! Descriptions written in markdown, rendered for the web UI: pulldown-cmark
//! turns them into HTML, raw HTML in the text is shown as the text it is,
//! and ammonia keeps only harmless tags and attributes of the result (no
//! scripts, no event handlers, no `javascript:` links).

use pulldown_cmark::Event;

/// Safe HTML of a markdown text.
pub fn render(markdown: &str) -> String {
    let parser = pulldown_cmark::Parser::new_ext(
        markdown,
        pulldown_cmark::Options::ENABLE_TABLES | pulldown_cmark::Options::ENABLE_STRIKETHROUGH,
    )
    .map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        other => other,
    });
    let mut html = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, parser);
    ammonia::Builder::default()
        .link_rel(Some("noopener noreferrer nofollow"))
        .clean(&html)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn markdown_is_rendered_and_raw_html_removed() {
        let html = render(
            "# Prod\n\nSee **the runbook**.\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1)) <img src=x onerror=alert(1)>",
        );
        assert!(html.contains("<h1>Prod</h1>"), "{html}");
        assert!(html.contains("<strong>the runbook</strong>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "shown as text: {html}"
        );
        assert!(!html.contains("javascript:"), "{html}");
        assert!(!html.contains("<img"), "as text, not a tag: {html}");
    }
}
