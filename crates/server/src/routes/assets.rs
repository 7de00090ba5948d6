//! Static assets embedded in the binary (WEB-7). A request names an entry of a fixed table;
//! nothing is ever read from the filesystem, so no spelling of `..`, encoded or not, can
//! reach a file.

use axum::extract::Extension;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::Segment;
use super::web::CspNonce;
use crate::error::ApiError;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/app.css"),
    },
];

const INDEX: &str = include_str!("../../assets/index.html");

/// The page, with this response's CSP nonce on its script tag. Never cached: the nonce must
/// not outlive the response.
#[utoipa::path(
    get,
    path = "/",
    tag = "web",
    responses((status = 200, description = "The web UI", content(("text/html")))),
)]
pub(super) async fn index(Extension(CspNonce(nonce)): Extension<CspNonce>) -> Response {
    let body = INDEX.replace("{{nonce}}", &nonce);
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One embedded file by exact name, or 404.
#[utoipa::path(
    get,
    path = "/ui/{path}",
    tag = "web",
    params(("path" = String, Path, description = "The file's name")),
    responses(
        (status = 200, description = "The file", content(("text/javascript"), ("text/css"))),
        (status = 404, description = "No embedded file has this name"),
    ),
)]
pub(super) async fn asset(Segment(path): Segment) -> Result<Response, ApiError> {
    let asset = lookup(&path).ok_or(ApiError::NotFound)?;
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // Revalidated on each use: assets change with the binary and carry no version in the name.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn lookup(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn only_the_exact_names_of_the_table_resolve() {
        assert!(lookup("app.js").is_some());
        for name in [
            "",
            "/app.js",
            "./app.js",
            "app.js/",
            "APP.JS",
            "../app.js",
            "..\\app.js",
            "app.js\0",
            "%61pp.js",
        ] {
            assert!(lookup(name).is_none(), "{name:?}");
        }
    }
}
