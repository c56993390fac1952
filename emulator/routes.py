"""The routing table: every path the emulator serves, public and admin, in one place.

Public routes (``/v2/...``, and the OAuth API's ``/oauth2/...``) are named by Square's operation IDs:
``app.square_middleware`` authenticates /v2 calls and injects faults by that name (knob ``endpoint_latency_ms``,
the Events API's token rules). Admin routes (``/_emulator/...``) need no token and have no name.

Order matters in one place. The literal paths under ``/v2/customers/`` (``search``, ``bulk-*``, ``groups``,
``segments``, ``custom-attribute-definitions``, ``custom-attributes/bulk-upsert``) are registered before the
``/v2/customers/{customer_id}`` routes, whose ``{customer_id}`` would match them too: aiohttp 3.9 (allowed by
pyproject) tries resources in registration order. From 3.10 on, aiohttp tries the longest literal prefix first,
so there the order changes nothing.
"""

from __future__ import annotations

from aiohttp import web

from . import admin, attribute_admin, customers, events_api, groups, oauth_admin, oauth_api, traffic_admin, webhooks_api
from . import custom_attributes as attrs


def setup_routes(app: web.Application) -> None:
    r = app.router

    # Customers API: the literal paths first (see the module docstring).
    r.add_get("/v2/customers", customers.list_customers, name="ListCustomers")
    r.add_post("/v2/customers", customers.create_customer, name="CreateCustomer")
    r.add_post("/v2/customers/search", customers.search_customers, name="SearchCustomers")
    r.add_post("/v2/customers/bulk-create", customers.bulk_create, name="BulkCreateCustomers")
    r.add_post("/v2/customers/bulk-update", customers.bulk_update, name="BulkUpdateCustomers")
    r.add_post("/v2/customers/bulk-retrieve", customers.bulk_retrieve, name="BulkRetrieveCustomers")
    r.add_post("/v2/customers/bulk-delete", customers.bulk_delete, name="BulkDeleteCustomers")

    # Customer Groups and Customer Segments APIs.
    r.add_get("/v2/customers/groups", groups.list_groups, name="ListCustomerGroups")
    r.add_post("/v2/customers/groups", groups.create_group, name="CreateCustomerGroup")
    r.add_get("/v2/customers/groups/{group_id}", groups.retrieve_group, name="RetrieveCustomerGroup")
    r.add_put("/v2/customers/groups/{group_id}", groups.update_group, name="UpdateCustomerGroup")
    r.add_delete("/v2/customers/groups/{group_id}", groups.delete_group, name="DeleteCustomerGroup")
    r.add_get("/v2/customers/segments", groups.list_segments, name="ListCustomerSegments")
    r.add_get("/v2/customers/segments/{segment_id}", groups.retrieve_segment, name="RetrieveCustomerSegment")

    # Customer Custom Attributes API: definitions and bulk upsert (literal paths).
    r.add_get("/v2/customers/custom-attribute-definitions", attrs.list_definitions,
              name="ListCustomerCustomAttributeDefinitions")
    r.add_post("/v2/customers/custom-attribute-definitions", attrs.create_definition,
               name="CreateCustomerCustomAttributeDefinition")
    r.add_get("/v2/customers/custom-attribute-definitions/{key}", attrs.retrieve_definition,
              name="RetrieveCustomerCustomAttributeDefinition")
    r.add_put("/v2/customers/custom-attribute-definitions/{key}", attrs.update_definition,
              name="UpdateCustomerCustomAttributeDefinition")
    r.add_delete("/v2/customers/custom-attribute-definitions/{key}", attrs.delete_definition,
                 name="DeleteCustomerCustomAttributeDefinition")
    r.add_post("/v2/customers/custom-attributes/bulk-upsert", attrs.bulk_upsert,
               name="BulkUpsertCustomerCustomAttributes")

    # One customer: every path from here on starts with /v2/customers/{customer_id}.
    r.add_get("/v2/customers/{customer_id}", customers.retrieve_customer, name="RetrieveCustomer")
    r.add_put("/v2/customers/{customer_id}", customers.update_customer, name="UpdateCustomer")
    r.add_delete("/v2/customers/{customer_id}", customers.delete_customer, name="DeleteCustomer")
    r.add_put("/v2/customers/{customer_id}/groups/{group_id}", customers.add_group, name="AddGroupToCustomer")
    r.add_delete("/v2/customers/{customer_id}/groups/{group_id}", customers.remove_group,
                 name="RemoveGroupFromCustomer")
    r.add_get("/v2/customers/{customer_id}/custom-attributes", attrs.list_attributes,
              name="ListCustomerCustomAttributes")
    r.add_get("/v2/customers/{customer_id}/custom-attributes/{key}", attrs.retrieve_attribute,
              name="RetrieveCustomerCustomAttribute")
    r.add_post("/v2/customers/{customer_id}/custom-attributes/{key}", attrs.upsert_attribute,
               name="UpsertCustomerCustomAttribute")
    r.add_delete("/v2/customers/{customer_id}/custom-attributes/{key}", attrs.delete_attribute,
                 name="DeleteCustomerCustomAttribute")

    # Events API and Merchants API.
    r.add_post("/v2/events", events_api.search, name="SearchEvents")
    r.add_get("/v2/events/types", events_api.list_event_types, name="ListEventTypes")
    r.add_put("/v2/events/enable", events_api.enable_events, name="EnableEvents")
    r.add_put("/v2/events/disable", events_api.disable_events, name="DisableEvents")
    r.add_get("/v2/merchants/{merchant_id}", events_api.retrieve_merchant, name="RetrieveMerchant")

    # Webhook Subscriptions API (the application token only).
    subs = "/v2/webhooks/subscriptions"
    r.add_get("/v2/webhooks/event-types", webhooks_api.list_event_types, name="ListWebhookEventTypes")
    r.add_get(subs, webhooks_api.list_subscriptions, name="ListWebhookSubscriptions")
    r.add_post(subs, webhooks_api.create_subscription, name="CreateWebhookSubscription")
    r.add_get(subs + "/{subscription_id}", webhooks_api.retrieve_subscription, name="RetrieveWebhookSubscription")
    r.add_put(subs + "/{subscription_id}", webhooks_api.update_subscription, name="UpdateWebhookSubscription")
    r.add_delete(subs + "/{subscription_id}", webhooks_api.delete_subscription, name="DeleteWebhookSubscription")
    r.add_post(subs + "/{subscription_id}/signature-key", webhooks_api.update_signature_key,
               name="UpdateWebhookSubscriptionSignatureKey")
    r.add_post(subs + "/{subscription_id}/test", webhooks_api.test_subscription, name="TestWebhookSubscription")

    # OAuth API (outside /v2: the handlers authenticate on their own).
    r.add_get("/oauth2/authorize", oauth_api.authorize, name="Authorize")
    r.add_post("/oauth2/token", oauth_api.obtain_token, name="ObtainToken")
    r.add_post("/oauth2/token/status", oauth_api.token_status, name="RetrieveTokenStatus")
    r.add_post("/oauth2/revoke", oauth_api.revoke_token, name="RevokeToken")

    # Admin API: what only the Square Dashboard can do, plus test control.
    r.add_post("/_emulator/reset", admin.reset)
    r.add_post("/_emulator/seed", admin.seed)
    r.add_get("/_emulator/state", admin.state)
    r.add_post("/_emulator/merge", admin.merge)
    r.add_post("/_emulator/instant-profiles", admin.instant_profile)
    r.add_post("/_emulator/segments", admin.create_segment)
    r.add_delete("/_emulator/segments/{segment_id}", admin.delete_segment)
    r.add_put("/_emulator/segments/{segment_id}/members/{customer_id}", admin.segment_member)
    r.add_delete("/_emulator/segments/{segment_id}/members/{customer_id}", admin.segment_member)
    r.add_get("/_emulator/faults", admin.get_faults)
    r.add_put("/_emulator/faults", admin.put_faults)
    r.add_post("/_emulator/subscriptions", admin.add_subscription)
    r.add_get("/_emulator/subscriptions", admin.list_subscriptions)
    r.add_delete("/_emulator/subscriptions/{subscription_id}", admin.delete_subscription)
    r.add_patch("/_emulator/customers/{customer_id}", admin.dashboard_update)
    r.add_put("/_emulator/customers/{customer_id}/custom-attributes/{key}", attribute_admin.set_value)
    r.add_delete("/_emulator/customers/{customer_id}/custom-attributes/{key}", attribute_admin.delete_value)
    r.add_get("/_emulator/custom-attribute-definitions", attribute_admin.list_definitions)
    r.add_post("/_emulator/custom-attribute-definitions", attribute_admin.create_definition)
    r.add_put("/_emulator/custom-attribute-definitions/{key}", attribute_admin.update_definition)
    r.add_delete("/_emulator/custom-attribute-definitions/{key}", attribute_admin.delete_definition)
    r.add_get("/_emulator/deliveries", admin.deliveries)
    r.add_post("/_emulator/deliveries/drain", admin.drain)
    r.add_get("/_emulator/sellers", admin.sellers)
    r.add_post("/_emulator/sellers", admin.add_seller)
    r.add_post("/_emulator/sellers/{merchant_id}/revoke-authorization", oauth_admin.revoke_authorization)
    r.add_post("/_emulator/sellers/{merchant_id}/{action:revoke|restore}", admin.revoke)
    r.add_post("/_emulator/oauth/next-approval", oauth_admin.next_approval)
    r.add_get("/_emulator/oauth", oauth_admin.dump)
    r.add_post("/_emulator/oauth/expire", oauth_admin.expire)
    r.add_post("/_emulator/oauth/invalidate-refresh", oauth_admin.invalidate_refresh)
    r.add_get("/_emulator/clock", oauth_admin.get_clock)
    r.add_post("/_emulator/clock/advance", oauth_admin.advance_clock)
    r.add_get("/_emulator/application", admin.get_application)
    r.add_put("/_emulator/application", admin.put_application)
    r.add_post("/_emulator/snapshot", admin.snapshot)
    r.add_post("/_emulator/restore", admin.restore)
    r.add_get("/_emulator/requests", traffic_admin.counts)
    r.add_delete("/_emulator/requests", traffic_admin.reset)
