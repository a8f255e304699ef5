"""HTTP: endpoints, pages, middleware, the OpenAPI document, static assets."""
