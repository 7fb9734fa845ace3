"""The OpenAPI 3.1 document of the admin API, served at /admin/openapi.json.

Request bodies come from the same pydantic models the handlers parse with, so the document
cannot drift from what the API accepts."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gateway import __version__
from gateway.api.schemas import CreateAccount, CreditAdjustment, NewOrg, OrgPatch, PlanChoice
from gateway.billing.contract import Contract

_REF = "#/components/schemas/{model}"

_ERROR = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"const": False},
        "error": {
            "type": "object",
            "required": ["code", "message", "details", "timestamp"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
                "timestamp": {"type": "string", "format": "date-time"},
            },
        },
    },
}


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _operation(
    summary: str,
    *,
    body: type[BaseModel] | None = None,
    params: list[dict[str, Any]] | None = None,
    ok: str = "200",
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        ok: {"description": "Done"}
        if ok == "204"
        else {
            "description": "Done",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "default": {
            "description": "The error envelope",
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
        },
    }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=body.__name__)}}},
        }
    return operation


def admin_openapi() -> dict[str, Any]:
    account = [_id("id")]
    usage = [
        *account,
        _query("from", {"type": "string", "format": "date-time"}),
        _query("to", {"type": "string", "format": "date-time"}),
        _query("granularity", {"type": "string", "enum": ["hour", "day"]}),
    ]
    paths: dict[str, Any] = {
        "/admin/reload": {"post": _operation("Reload the catalog")},
        "/admin/accounts": {"post": _operation("Create an account", body=CreateAccount, ok="201")},
        "/admin/accounts/{id}": {
            "get": _operation("An account with orgs and keys", params=account)
        },
        "/admin/accounts/{id}/orgs": {
            "post": _operation("Add an organization", body=NewOrg, params=account, ok="201")
        },
        "/admin/orgs/{id}": {
            "patch": _operation("Change an organization", body=OrgPatch, params=[_id("id")])
        },
        "/admin/orgs/{id}/keys": {
            "post": _operation("Create an API key", params=[_id("id")], ok="201")
        },
        "/admin/keys/{id}": {
            "delete": _operation("Revoke an API key", params=[_id("id")], ok="204")
        },
        "/admin/accounts/{id}/subscription": {
            "post": _operation("Change plan", body=PlanChoice, params=account)
        },
        "/admin/accounts/{id}/subscription/preview": {
            "post": _operation("Preview a plan change", body=PlanChoice, params=account)
        },
        "/admin/accounts/{id}/cancel": {"post": _operation("Cancel at period end", params=account)},
        "/admin/accounts/{id}/reactivate": {
            "post": _operation("Withdraw a cancellation", params=account)
        },
        "/admin/accounts/{id}/contract": {
            "put": _operation("Sign or amend an enterprise contract", body=Contract, params=account)
        },
        "/admin/accounts/{id}/credits": {
            "post": _operation(
                "Adjust this cycle's credits", body=CreditAdjustment, params=account, ok="201"
            )
        },
        "/admin/accounts/{id}/usage": {"get": _operation("Usage buckets", params=usage)},
        "/admin/accounts/{id}/requests": {
            "get": _operation(
                "Recent requests",
                params=[
                    *account,
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
            )
        },
        "/admin/accounts/{id}/billing": {"get": _operation("Billing history", params=account)},
    }
    schemas: dict[str, Any] = {"Error": _ERROR}
    for model in (CreateAccount, PlanChoice, CreditAdjustment, NewOrg, OrgPatch, Contract):
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "gateway admin API", "version": __version__},
        "servers": [{"url": "/"}],
        "security": [{"admin": []}],
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "paths": paths,
    }
