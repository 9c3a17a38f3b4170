//! Discovery: `GET /openapi.json`, an OpenAPI 3.1 document listing the paid operations.
//!
//! Built from the same [`Route`]s the engine charges with, so the advertised prices cannot drift
//! from the enforced ones (the runtime `402` challenge stays authoritative, as MPP says).
//! Each paid operation carries `x-payment-info` (one offer, or `{"offers": […]}` when several
//! routes are accepted) and declares a `402` response with an `application/problem+json` body;
//! the root carries `x-service-info`. The document passes mppx 0.11.0's discovery validator.
//!
//! ```
//! use axum::http::Method;
//! use sluice_engine::http::openapi::{OpenApiDoc, Operation, ServiceInfo, openapi_router};
//! # fn doc(chat: &sluice_engine::Route) -> Result<(), sluice_engine::http::openapi::OpenApiError> {
//! let doc = OpenApiDoc::new("Example LLM API", "1.0.0")
//!     .service_info(ServiceInfo { categories: vec!["ai".into()], ..ServiceInfo::default() })?
//!     .operation(
//!         Method::POST,
//!         "/v1/chat",
//!         Operation::paid(chat)
//!             .summary("Chat completion, billed per token")
//!             .json_request_body(serde_json::json!({ "type": "object" })),
//!     )?
//!     .free(Method::GET, "/health", "Liveness")?;
//! let router = openapi_router(&doc); // merge into the public router
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use crate::Route;
use crate::protocol::{INTENT_SESSION, METHOD_TEMPO};

/// The path the document is served at.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// The OpenAPI version written into the document.
pub const OPENAPI_VERSION: &str = "3.1.0";
/// The `Cache-Control` value of the document (PROTOCOL §7 suggests five minutes).
pub const OPENAPI_CACHE_CONTROL: &str = "max-age=300";

/// Why an operation or service description cannot go into the document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenApiError {
    /// A path does not start with `/` or contains whitespace or control characters.
    #[error("path {path:?} must start with '/' and contain no whitespace")]
    InvalidPath {
        /// The path given.
        path: String,
    },
    /// OpenAPI path items have no field for this method.
    #[error("HTTP method {method} cannot be described in an OpenAPI path item")]
    UnsupportedMethod {
        /// The method given.
        method: String,
    },
    /// The operation was already added.
    #[error("operation {method} {path} is already described")]
    DuplicateOperation {
        /// The method (lower case, as in the document).
        method: &'static str,
        /// The path.
        path: String,
    },
    /// A service link is neither an absolute URI nor a path.
    #[error("x-service-info docs.{field} {value:?} is neither an absolute URI nor a path")]
    InvalidServiceLink {
        /// `apiReference`, `homepage` or `llms`.
        field: &'static str,
        /// The value given.
        value: String,
    },
}

/// The root `x-service-info`: what the service is about and where its documentation lives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Free-form categories, e.g. `ai`, `search`.
    pub categories: Vec<String>,
    /// `docs.apiReference`: an absolute URI or a path.
    pub api_reference: Option<String>,
    /// `docs.homepage`: an absolute URI or a path.
    pub homepage: Option<String>,
    /// `docs.llms`: an absolute URI or a path (e.g. `/llms.txt`).
    pub llms: Option<String>,
}

impl ServiceInfo {
    fn check(&self) -> Result<(), OpenApiError> {
        for (field, value) in [
            ("apiReference", &self.api_reference),
            ("homepage", &self.homepage),
            ("llms", &self.llms),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !is_uri_or_path(v)) {
                return Err(OpenApiError::InvalidServiceLink {
                    field,
                    value: value.to_owned(),
                });
            }
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        let mut docs = Map::new();
        for (field, value) in [
            ("apiReference", &self.api_reference),
            ("homepage", &self.homepage),
            ("llms", &self.llms),
        ] {
            if let Some(value) = value {
                docs.insert(field.into(), value.clone().into());
            }
        }
        let mut info = Map::new();
        if !self.categories.is_empty() {
            info.insert("categories".into(), self.categories.clone().into());
        }
        if !docs.is_empty() {
            info.insert("docs".into(), docs.into());
        }
        info.into()
    }
}

/// `scheme://non-space…` or `/…` without whitespace (what mppx's validator accepts).
fn is_uri_or_path(value: &str) -> bool {
    if value.chars().any(char::is_whitespace) {
        return false;
    }
    if value.starts_with('/') {
        return true;
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
        && !rest.is_empty()
}

/// One payment offer of an operation: a session route's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Offer {
    amount: u128,
    currency: String,
    recipient: String,
    unit_type: String,
    description: Option<String>,
    suggested_deposit: Option<u128>,
}

impl Offer {
    fn of(route: &Route) -> Self {
        let request = &route.session_route().request;
        Self {
            amount: route.price().amount,
            currency: request.currency.as_str().to_owned(),
            recipient: request.recipient.as_str().to_owned(),
            unit_type: route.price().unit_type.clone(),
            description: route.price().description.clone(),
            suggested_deposit: route.price().suggested_deposit,
        }
    }

    /// The offer as mppx's generator writes one: the spec fields `intent`, `method`, `amount`
    /// (the price of one unit, base units, decimal string), `currency`, `description`, then the
    /// request's extension fields (`recipient`, `unitType`, `suggestedDeposit`).
    fn to_json(&self) -> Value {
        let mut offer = Map::new();
        offer.insert("intent".into(), INTENT_SESSION.into());
        offer.insert("method".into(), METHOD_TEMPO.into());
        offer.insert("amount".into(), self.amount.to_string().into());
        offer.insert("currency".into(), self.currency.clone().into());
        if let Some(description) = &self.description {
            offer.insert("description".into(), description.clone().into());
        }
        offer.insert("recipient".into(), self.recipient.clone().into());
        offer.insert("unitType".into(), self.unit_type.clone().into());
        if let Some(deposit) = self.suggested_deposit {
            offer.insert("suggestedDeposit".into(), deposit.to_string().into());
        }
        offer.into()
    }
}

/// One operation of the document: free, or paid with one or more offers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Operation {
    summary: Option<String>,
    offers: Vec<Offer>,
    request_body: Option<Value>,
}

impl Operation {
    /// An operation that needs no payment.
    pub fn free() -> Self {
        Self::default()
    }

    /// An operation paid through `route`.
    pub fn paid(route: &Route) -> Self {
        Self::default().offer(route)
    }

    /// Also accepts payment through `route` (the document then lists `{"offers": […]}`).
    #[must_use]
    pub fn offer(mut self, route: &Route) -> Self {
        self.offers.push(Offer::of(route));
        self
    }

    /// A one-line summary.
    #[must_use]
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }

    /// A required `application/json` request body with `schema` (a JSON Schema object).
    /// mppx's validator warns about paid `POST`/`PUT`/`PATCH` operations without one.
    #[must_use]
    pub fn json_request_body(mut self, schema: Value) -> Self {
        self.request_body = Some(json!({
            "required": true,
            "content": { "application/json": { "schema": schema } },
        }));
        self
    }

    /// Whether the operation is paid.
    pub fn is_paid(&self) -> bool {
        !self.offers.is_empty()
    }

    fn to_json(&self) -> Value {
        let mut operation = Map::new();
        if let Some(summary) = &self.summary {
            operation.insert("summary".into(), summary.clone().into());
        }
        if let Some(body) = &self.request_body {
            operation.insert("requestBody".into(), body.clone());
        }
        let mut responses = Map::new();
        if self.is_paid() {
            let info = match self.offers.as_slice() {
                [one] => one.to_json(),
                many => json!({ "offers": many.iter().map(Offer::to_json).collect::<Vec<_>>() }),
            };
            operation.insert("x-payment-info".into(), info);
            responses.insert(
                "200".into(),
                json!({
                    "description": "Successful response (paid)",
                    "headers": {
                        "Payment-Receipt": {
                            "description": "The MPP receipt of the payment (base64url JSON)",
                            "schema": { "type": "string" },
                        },
                    },
                }),
            );
            responses.insert(
                "402".into(),
                json!({
                    "description": "Payment Required",
                    "headers": {
                        "WWW-Authenticate": {
                            "description": "An MPP `Payment` challenge (method `tempo`, intent `session`)",
                            "schema": { "type": "string" },
                        },
                    },
                    "content": {
                        "application/problem+json": {
                            "schema": { "$ref": "#/components/schemas/Problem" },
                        },
                    },
                }),
            );
        } else {
            responses.insert(
                "200".into(),
                json!({ "description": "Successful response" }),
            );
        }
        operation.insert("responses".into(), responses.into());
        operation.into()
    }
}

/// The RFC 9457 problem body schema referenced by every `402` response.
fn problem_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": { "type": "string", "format": "uri" },
            "title": { "type": "string" },
            "status": { "type": "integer" },
            "detail": { "type": "string" },
            "challengeId": { "type": "string" },
        },
    })
}

/// The lower-case OpenAPI field of an HTTP method.
fn method_field(method: &Method) -> Result<&'static str, OpenApiError> {
    Ok(match *method {
        Method::GET => "get",
        Method::PUT => "put",
        Method::POST => "post",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        Method::HEAD => "head",
        Method::PATCH => "patch",
        Method::TRACE => "trace",
        _ => {
            return Err(OpenApiError::UnsupportedMethod {
                method: method.to_string(),
            });
        }
    })
}

/// An OpenAPI 3.1 discovery document, built operation by operation.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenApiDoc {
    title: String,
    version: String,
    service_info: Option<ServiceInfo>,
    paths: BTreeMap<String, BTreeMap<&'static str, Operation>>,
}

impl OpenApiDoc {
    /// An empty document for the API `title` at `version` (`info.title`, `info.version`).
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            service_info: None,
            paths: BTreeMap::new(),
        }
    }

    /// Sets the root `x-service-info`.
    pub fn service_info(mut self, info: ServiceInfo) -> Result<Self, OpenApiError> {
        info.check()?;
        self.service_info = Some(info);
        Ok(self)
    }

    /// Adds `operation` at `method` `path` (`/v1/items/{id}` style templates are fine).
    pub fn operation(
        mut self,
        method: Method,
        path: impl Into<String>,
        operation: Operation,
    ) -> Result<Self, OpenApiError> {
        let path = path.into();
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(OpenApiError::InvalidPath { path });
        }
        let method = method_field(&method)?;
        let item = self.paths.entry(path.clone()).or_default();
        if item.contains_key(method) {
            return Err(OpenApiError::DuplicateOperation { method, path });
        }
        item.insert(method, operation);
        Ok(self)
    }

    /// Adds an operation paid through `route`, with a summary.
    pub fn paid(
        self,
        method: Method,
        path: impl Into<String>,
        route: &Route,
        summary: impl Into<String>,
    ) -> Result<Self, OpenApiError> {
        self.operation(method, path, Operation::paid(route).summary(summary))
    }

    /// Adds a free operation, with a summary.
    pub fn free(
        self,
        method: Method,
        path: impl Into<String>,
        summary: impl Into<String>,
    ) -> Result<Self, OpenApiError> {
        self.operation(method, path, Operation::free().summary(summary))
    }

    /// The document as JSON.
    pub fn to_json(&self) -> Value {
        let mut paths = Map::new();
        let mut any_paid = false;
        for (path, item) in &self.paths {
            let mut operations = Map::new();
            for (method, operation) in item {
                any_paid |= operation.is_paid();
                operations.insert((*method).into(), operation.to_json());
            }
            paths.insert(path.clone(), operations.into());
        }
        let mut doc = Map::new();
        doc.insert("openapi".into(), OPENAPI_VERSION.into());
        doc.insert(
            "info".into(),
            json!({ "title": self.title, "version": self.version }),
        );
        if let Some(info) = &self.service_info {
            doc.insert("x-service-info".into(), info.to_json());
        }
        doc.insert("paths".into(), paths.into());
        if any_paid {
            doc.insert(
                "components".into(),
                json!({ "schemas": { "Problem": problem_schema() } }),
            );
        }
        doc.into()
    }
}

/// The router serving `GET /openapi.json` (rendered once, here) with
/// `Content-Type: application/json` and `Cache-Control: max-age=300`. Merge it into the public
/// router.
pub fn openapi_router(doc: &OpenApiDoc) -> Router {
    let body = Bytes::from(doc.to_json().to_string());
    Router::new().route(
        OPENAPI_PATH,
        get(move || {
            let body = body.clone();
            async move { document_response(body) }
        }),
    )
}

fn document_response(body: Bytes) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(OPENAPI_CACHE_CONTROL),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_links_must_be_uris_or_paths() {
        for good in ["/llms.txt", "https://example.com/docs", "git+ssh://host/x"] {
            assert!(is_uri_or_path(good), "{good}");
        }
        for bad in ["llms.txt", "https://", "://x", "/a b", "1http://x", ""] {
            assert!(!is_uri_or_path(bad), "{bad}");
        }
        let error = OpenApiDoc::new("t", "1")
            .service_info(ServiceInfo {
                homepage: Some("example.com".into()),
                ..ServiceInfo::default()
            })
            .unwrap_err();
        assert_eq!(
            error,
            OpenApiError::InvalidServiceLink {
                field: "homepage",
                value: "example.com".into()
            }
        );
    }

    #[test]
    fn operations_are_checked() {
        let doc = OpenApiDoc::new("t", "1");
        assert!(matches!(
            doc.clone().free(Method::GET, "health", "x"),
            Err(OpenApiError::InvalidPath { .. })
        ));
        assert!(matches!(
            doc.clone().free(Method::GET, "/a b", "x"),
            Err(OpenApiError::InvalidPath { .. })
        ));
        assert!(matches!(
            doc.clone().free(Method::CONNECT, "/x", "x"),
            Err(OpenApiError::UnsupportedMethod { .. })
        ));
        let doc = doc.free(Method::GET, "/x", "x").unwrap();
        assert_eq!(
            doc.clone().free(Method::GET, "/x", "again").unwrap_err(),
            OpenApiError::DuplicateOperation {
                method: "get",
                path: "/x".into()
            }
        );
        let doc = doc.free(Method::POST, "/x", "post").unwrap();
        let json = doc.to_json();
        assert_eq!(json["paths"]["/x"]["get"]["summary"], "x");
        assert_eq!(json["paths"]["/x"]["post"]["summary"], "post");
        assert!(json.get("components").is_none(), "no paid operation");
        assert!(json["paths"]["/x"]["get"]["responses"].get("402").is_none());
    }
}
