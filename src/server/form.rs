//! A request's fields, from a multipart form (an uploaded image) or a JSON body (an image by
//! path, or a follow-up), checked before any work starts.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_TYPE;

use super::ServeError;
use crate::vision::BBox;

/// The fields of one request.
#[derive(Debug, Default)]
pub struct Form {
    /// An uploaded image's bytes and file name.
    pub image: Option<(Vec<u8>, String)>,
    text: BTreeMap<String, String>,
}

impl Form {
    /// Reads the body; only the fields in `allowed` are accepted (a misspelt field is an
    /// error, not silently ignored).
    pub async fn read(req: Request, allowed: &[&str], limit: usize) -> Result<Self, ServeError> {
        // A declared length over the limit is refused before any of the body is read (the
        // client learns at once, instead of after uploading it all).
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared.filter(|&n| n > limit as u64) {
            return Err(ServeError::TooLarge(format!(
                "the body is {n} bytes; the limit is {limit} (--max-upload-mib)"
            )));
        }
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let form = if ct.starts_with("multipart/form-data") {
            let mp = Multipart::from_request(req, &())
                .await
                .map_err(|e| ServeError::BadRequest(format!("not a multipart form: {e}")))?;
            Self::from_multipart(mp).await?
        } else if ct.starts_with("application/json") {
            let bytes = axum::body::Bytes::from_request(req, &())
                .await
                .map_err(body_error)?;
            Self::from_json(&bytes)?
        } else {
            return Err(ServeError::BadRequest(
                "send a multipart form (with an `image` file) or a JSON object \
                 (Content-Type: application/json)"
                    .into(),
            ));
        };
        if let Some(k) = form
            .text
            .keys()
            .map(String::as_str)
            .chain(form.image.as_ref().map(|_| "image"))
            .find(|k| !allowed.contains(k))
        {
            return Err(ServeError::BadRequest(format!(
                "unknown field {k:?}; this endpoint takes {}",
                allowed.join(", ")
            )));
        }
        Ok(form)
    }

    async fn from_multipart(mut mp: Multipart) -> Result<Self, ServeError> {
        let mut form = Self::default();
        while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or("").to_string();
            if name == "image" {
                let file = field.file_name().unwrap_or("upload").to_string();
                let bytes = field.bytes().await.map_err(multipart_error)?;
                form.image = Some((bytes.to_vec(), file));
                continue;
            }
            let bytes = field.bytes().await.map_err(multipart_error)?;
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                ServeError::BadRequest(format!("the field {name:?} is not UTF-8 text"))
            })?;
            form.text.insert(name, text);
        }
        Ok(form)
    }

    fn from_json(bytes: &[u8]) -> Result<Self, ServeError> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ServeError::BadRequest(format!("the body is not valid JSON: {e}")))?;
        let serde_json::Value::Object(map) = v else {
            return Err(ServeError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        };
        let mut form = Self::default();
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => continue,
                // A region as an array, objects as a list: kept as JSON text, parsed below.
                other => other.to_string(),
            };
            form.text.insert(k, text);
        }
        Ok(form)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.text.get(k).map(String::as_str)
    }

    /// A region given as `x1,y1,x2,y2` or `[x1,y1,x2,y2]`.
    pub fn region(&self) -> Result<Option<BBox>, ServeError> {
        self.get("region")
            .map(|s| {
                let s = s.trim().trim_start_matches('[').trim_end_matches(']');
                BBox::parse(s).map_err(|e| ServeError::BadRequest(format!("region: {e}")))
            })
            .transpose()
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ServeError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ServeError::TooLarge(e.body_text())
    } else {
        ServeError::BadRequest(format!("malformed multipart form: {}", e.body_text()))
    }
}

fn body_error(e: axum::extract::rejection::BytesRejection) -> ServeError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ServeError::TooLarge(e.body_text())
    } else {
        ServeError::BadRequest(e.body_text())
    }
}
