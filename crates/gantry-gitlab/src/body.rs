//! Reading GitLab's answers within bounds: a body larger than any GitLab
//! sends is refused while it streams in, and an error message carried on
//! is cut, so a hostile host can neither exhaust memory nor fill an API
//! error with its body.

use bytes::Bytes;

/// The most of an answer's body the client reads: GitLab's largest
/// answers Gantry asks for (a compare with its diffs) stay far below it,
/// and a hostile host cannot exhaust the server's memory.
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// The most of GitLab's error message an error carries.
pub(crate) const MAX_MESSAGE_CHARS: usize = 500;

/// The body, or `None` when it is larger than [`MAX_BODY`].
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
) -> Result<Option<Bytes>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|length| length > MAX_BODY as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(body)))
}

pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
