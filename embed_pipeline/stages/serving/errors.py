"""OpenAI-style JSON errors, so clients (and the ``openai`` package's exception classes) understand every failure.

Handlers raise :class:`ApiError`; the app turns it, Starlette's 404/405 and anything unexpected into
``{"error": {"message", "type", "code", "param"}}``. Unexpected exceptions become a 500 whose message says where
to look (the server log) and never carries a stack trace or exception text, which could leak paths or data.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from embed_pipeline.stages.serving.schemas import ErrorBody, ErrorDetail

# HTTP status -> OpenAI error type.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """A failure to report to the client as is: its message must say what was wrong and what to do."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(
        error=ErrorDetail(
            message=message, type=ERROR_TYPES.get(status, "invalid_request_error"), code=code, param=param
        )
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)
