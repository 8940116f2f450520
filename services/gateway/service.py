"""The gateway: the web portal's HTTP API (ARCHITECTURE.md, "Gateway conventions").

Each route is one method: `@api` authenticates the caller, validates the body with its contract
schema and the query with the list schema, and turns every error into problem+json
(services/gateway/http.py); the method makes one RPC and shapes its answer.
`GET /openapi.json` describes the same routes (services/gateway/openapi.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from nameko.dependency_providers import Config

from concierge.rpc import RpcProxy
from contracts.accounts import (
    CODE_DIGITS,
    CODE_SECONDS,
    CODE_TRIES,
    FREE_FAMILY_MEMBERS,
    INSTALLER_ROLES,
    LOCKOUT_SECONDS,
    LOCKOUT_WINDOW_SECONDS,
    LOGIN_LIMITS,
    MAX_SESSIONS,
    PROPERTY_MANAGER,
    RESET_LIMITS,
    AccountEdit,
    FamilyMemberCreate,
    FamilyMemberEdit,
    InstallerCreate,
    InstallerSettings,
    LoginRequest,
    LoginResponse,
    LoginVerify,
    PasswordChange,
    PasswordForgotten,
    PasswordReset,
    PropertyManagerCreate,
    PropertyManagerEdit,
    SubInstallerCreate,
    SubInstallerEdit,
)
from contracts.devices import (
    CameraCreate,
    CameraEdit,
    CommandCreate,
    CredentialCreate,
    DeviceCreate,
    DeviceEdit,
    DeviceImport,
    LockCreate,
    LockEdit,
    MacImport,
    MacRegister,
)
from contracts.errors import Unauthorized
from contracts.topology import (
    ApartmentCreate,
    ApartmentEdit,
    BuildingCreate,
    BuildingEdit,
    CommunityCreate,
    CommunityEdit,
)
from services.gateway import openapi
from services.gateway.declaration import CONTEXT
from services.gateway.http import (
    BuildingsQuery,
    Call,
    CascadeQuery,
    CommandsQuery,
    CommunitiesQuery,
    DevicesQuery,
    LogQuery,
    MacLibraryQuery,
    PageQuery,
    PropertyManagersQuery,
    ResidentsQuery,
    Sessions,
    SubInstallersQuery,
    ThirdPartyQuery,
    api,
    created,
    page,
    routes_of,
)

V1 = "/api/v1"
COMMUNITY = f"{V1}/communities/<uuid:community_id>"
BUILDING = f"{V1}/buildings/<uuid:building_id>"
APARTMENT = f"{V1}/apartments/<uuid:apartment_id>"
DEVICE = f"{V1}/devices/<uuid:device_id>"
INSTALLER_MACS = f"{V1}/installers/<uuid:installer_id>/mac-library"
DISTRIBUTOR = ("distributor",)
AREAS = {"community": COMMUNITY, "building": BUILDING, "apartment": APARTMENT}
DEVICE_IMPORT_DESCRIPTION = (
    "Add Devices Using a Template: `devices` holds \"Device name, Device type, Device MAC\" "
    "items separated by ';' (at most 1,000). Answers 200 with each item's outcome: `added` "
    "(with the device's id and SIP number) or `refused` (with `errors` naming the field: a "
    "malformed item, a type the area does not take, a MAC not in the MAC library, used by "
    "another device, or named twice). The items that can be added are, in one transaction; "
    "nothing is half-added.")
COMMAND_DESCRIPTION = (
    "Queues a durable command: notify pushes it to the device's mailbox on the broker and the "
    "device's acknowledgements move it on. Its `state` is queued, sent, delivered, then "
    "succeeded, failed, or expired once `deadline_seconds` (default 3600) passed first; "
    "`GET /api/v1/commands/{id}` shows its history. Autop commands are \"key = value\" lines, "
    "one value per key (duplicates are not kept); without `once` the device also keeps them "
    "(the device's `autop`).")
MAC_IMPORT_DESCRIPTION = (
    "Registers many MACs to one of the distributor's installers: one MAC per line of `csv` "
    "(its first column; a header line and blank lines are skipped; ':' and '-' separators "
    "are taken). Answers each row's outcome: added, duplicate (in this installer's library "
    "already, or twice in the file), taken (another installer's), malformed. The rows that "
    "can be added are, together; the others are reported, never silently dropped.")
# Sites (communities, buildings, APTs, residents) are an installer's (manual: Sites), worked on
# by it and its sub-installers alike; topology refuses anyone else, and the gateway does so
# first, before it looks at a body or a query.
INSTALLER = INSTALLER_ROLES
# What a property manager may use too, in its communities alone and as its permissions there
# say (each context checks both): reading the sites, devices and logs, keeping the residents
# and their credentials. Building, installing and running the sites stays the installer's.
SITES = (*INSTALLER_ROLES, PROPERTY_MANAGER)
# What only the main installer account does: its sub-accounts (manual: Users).
MAIN_INSTALLER = ("installer",)
SUB_INSTALLER = f"{V1}/sub-installers/<uuid:account_id>"
PROPERTY_MANAGER_PATH = f"{V1}/property-managers/<uuid:account_id>"
FAMILY_MEMBER = f"{V1}/family-members/<uuid:family_member_id>"
FAMILY_DESCRIPTION = (
    f"Each master account has {FREE_FAMILY_MEMBERS} free family member accounts; the fourth "
    "and later are 402 with a problem saying an Additional App is needed. A deleted family "
    "member's free account stays used until the APT is reset (manual: \"It is free to create "
    "a new account in the family after resetting, while it charges after deleting\"). Each "
    "family member gets a SIP number of its own (10 digits starting 58).")
PROPERTY_MANAGER_DESCRIPTION = (
    "The login is the email; the password is made by the platform and emailed, never "
    "answered. A property manager sees only the communities it is given, and within them only "
    "what its permissions there allow: reading sites, devices and residents, keeping the "
    "residents and their credentials; resetting an APT (it removes the resident's account) "
    "takes `delete_account`, the door and call logs take `log_access_control`. An unassigned "
    "community is 404 to it; a route for installers alone, or one its permission there does "
    "not allow, is 403.")
SUB_INSTALLER_DESCRIPTION = (
    "The login password is made by the platform and emailed to `email` (manual: \"The "
    "SmartPlus portal login password will be sent to the email address\"); it is never "
    "answered. A sub-installer logs in with its username and sees exactly its installer's "
    "data; what it does is recorded with the sub-installer as the actor.")
LOGIN_DESCRIPTION = (
    f"Opens a session and answers its bearer token. An account keeps at most {MAX_SESSIONS} "
    f"sessions open: login number {MAX_SESSIONS + 1} ends the oldest session, whose token is "
    "refused (401) from then on, within a few seconds. A wrong username or password is 401, "
    "alike for both; too many logins at once is 503 with Retry-After. Failed logins are "
    f"counted per username and client address: {LOGIN_LIMITS['pair']} for one username from "
    f"one address, {LOGIN_LIMITS['user']} for one username, or {LOGIN_LIMITS['addr']} from one "
    f"address within {LOCKOUT_WINDOW_SECONDS // 60} minutes lock that username or address "
    f"for {LOCKOUT_SECONDS // 60} minutes (429 with Retry-After), whether or not the username "
    "exists, and the password is not checked meanwhile. An account with two-factor login gets "
    "no token yet: `two_factor` holds the challenge whose code was emailed "
    "(POST /api/v1/auth/login/verify).")


class GatewayService:
    name = CONTEXT.name

    topology = RpcProxy("topology")
    accounts = RpcProxy("accounts")
    devices = RpcProxy("devices")
    sessions = Sessions()
    config = Config()

    @property
    def timeout_seconds(self) -> float:
        """Every request ends within this time, answered 504 if a service is stuck."""
        return float(self.config.get("GATEWAY_TIMEOUT_SECONDS", 10.0))

    @property
    def trusted_proxies(self) -> int:
        """Proxies in front of the gateway whose X-Forwarded-For names the client."""
        return int(self.config.get("GATEWAY_TRUSTED_PROXIES", 0))

    def principal(self, token: str) -> dict[str, Any]:
        """Who holds this bearer token: from the short-lived cache, else from accounts."""
        found = self.sessions.get(token)
        if found is None:
            found = self.accounts.authenticate(token)
            if not found:
                raise Unauthorized("The session has ended; log in again.")
            self.sessions.put(token, found)
        return found

    # --- service ----------------------------------------------------------------------------

    @api("GET", "/healthz", summary="Liveness", tag="service", auth=False, returns="Health",
         calls_rpc=False)
    def healthz(self, call: Call) -> Any:
        return {"status": "ok"}

    @api("GET", "/openapi.json", summary="This API as OpenAPI 3.1", tag="service", auth=False,
         returns="OpenApiDocument", calls_rpc=False)
    def openapi_document(self, call: Call) -> Any:
        return _document()

    # --- auth -------------------------------------------------------------------------------

    @api("POST", f"{V1}/auth/login", summary="Log in", tag="auth", auth=False, body=LoginRequest,
         returns=LoginResponse, errors=(401, 429), description=LOGIN_DESCRIPTION)
    def login(self, call: Call) -> Any:
        return self.accounts.login(call.body, ctx=call.ctx)

    @api("POST", f"{V1}/auth/login/verify", summary="Finish a two-factor login with the "
         "emailed code", tag="auth", auth=False, body=LoginVerify, returns=LoginResponse,
         errors=(401, 429), description=(
             "The `challenge` a login answered and the code emailed for it "
             f"({CODE_DIGITS} digits, good for {CODE_SECONDS // 60} minutes and {CODE_TRIES} "
             "tries): the session opens. A wrong, expired or spent code is 401 alike; wrong "
             "codes count as failed logins."))
    def verify_login(self, call: Call) -> Any:
        return self.accounts.verify_login(call.ctx, call.body)

    @api("POST", f"{V1}/auth/logout", summary="Log out", tag="auth", status=204, returns=None)
    def logout(self, call: Call) -> Any:
        assert call.token is not None  # authenticated routes always have one
        self.sessions.forget(call.token)
        self.accounts.logout(call.token)

    @api("POST", f"{V1}/auth/forgot-password", summary="Email a link to reset a forgotten "
         "password", tag="auth", auth=False, body=PasswordForgotten, status=202, returns=None,
         errors=(429,), description=(
             "Always 202 alike, whether or not the username is an account with an email; if "
             "it is, a link that works once for one hour is emailed to it. At most "
             f"{RESET_LIMITS['user']} links for one username and {RESET_LIMITS['addr']} from "
             f"one address within {LOCKOUT_WINDOW_SECONDS // 60} minutes (429)."))
    def forgot_password(self, call: Call) -> Any:
        self.accounts.forgot_password(call.ctx, call.body)

    @api("POST", f"{V1}/auth/reset-password", summary="Set a new password with the emailed "
         "link's token", tag="auth", auth=False, body=PasswordReset, status=204, returns=None,
         errors=(429,), description=(
             "The token of the link a forgotten-password email carries, used once: the "
             "password is set and every session of the account ends. A token that was used, "
             "replaced or has expired is 422 naming `token`."))
    def reset_password(self, call: Call) -> Any:
        self.accounts.reset_password(call.ctx, call.body)

    @api("POST", f"{V1}/auth/logout-everywhere", summary="Log out of every session",
         tag="auth", status=204, returns=None,
         description="Ends every session of the caller's account, this one included.")
    def logout_everywhere(self, call: Call) -> Any:
        self.accounts.logout_everywhere(call.ctx)
        self.sessions.forget_account(str(call.ctx["account_id"]))

    @api("GET", f"{V1}/account", summary="The caller's own account", tag="account")
    def get_account(self, call: Call) -> Any:
        return self.accounts.account(call.ctx)

    @api("PATCH", f"{V1}/account", summary="The caller's own settings: two-factor login",
         tag="account", body=AccountEdit)
    def edit_account(self, call: Call) -> Any:
        return self.accounts.edit_account(call.ctx, call.body)

    @api("GET", f"{V1}/account/settings", summary="The installer's settings (manual: Setting)",
         tag="account", roles=MAIN_INSTALLER)
    def installer_settings(self, call: Call) -> Any:
        return self.accounts.installer_settings(call.ctx)

    @api("PATCH", f"{V1}/account/settings", summary="Change the installer's settings: time "
         "zone, billing information, customer service, notification email, distributor access",
         tag="account", body=InstallerSettings, roles=MAIN_INSTALLER,
         description="Each part given replaces that part (billing and customer service field by "
                     "field); the distributor may not access the account until "
                     "`allow_distributor_access` is turned on.")
    def edit_installer_settings(self, call: Call) -> Any:
        return self.accounts.edit_installer_settings(call.ctx, call.body)

    @api("POST", f"{V1}/account/password", summary="Change the caller's password",
         tag="account", body=PasswordChange, status=204, returns=None, errors=(429,),
         description="The current password is required (422 naming `current_password` when "
                     "wrong; wrong ones count as failed logins). Every other session of the "
                     "account ends; this one stays.")
    def change_password(self, call: Call) -> Any:
        self.accounts.change_password(call.ctx, call.token, call.body)
        self.sessions.forget_account(str(call.ctx["account_id"]), keep=call.token)

    @api("POST", f"{V1}/installers", summary="Create an installer", tag="installers",
         body=InstallerCreate, roles=("distributor",), status=201, returns="Created")
    def create_installer(self, call: Call) -> Any:
        return created(self.accounts.create_installer(call.ctx, call.body))

    # --- sub-installers (manual: Users > Sub Account) -------------------------------------

    @api("POST", f"{V1}/sub-installers", summary="Create a sub-installer account",
         tag="users", body=SubInstallerCreate, status=201, returns="Created",
         location=f"{V1}/sub-installers/{{id}}", roles=MAIN_INSTALLER, errors=(409,),
         description=SUB_INSTALLER_DESCRIPTION)
    def create_sub_installer(self, call: Call) -> Any:
        return self.accounts.create_sub_installer(call.ctx, call.body)

    @api("GET", f"{V1}/sub-installers", summary="The installer's sub-installer accounts",
         tag="users", query=SubInstallersQuery, returns="Page", roles=MAIN_INSTALLER)
    def list_sub_installers(self, call: Call) -> Any:
        return page(call, self.accounts.list_sub_installers(call.ctx, call.query))

    @api("GET", SUB_INSTALLER, summary="Get a sub-installer account", tag="users",
         roles=MAIN_INSTALLER)
    def get_sub_installer(self, call: Call, account_id: str) -> Any:
        return self.accounts.get_sub_installer(call.ctx, account_id)

    @api("PATCH", SUB_INSTALLER, summary="Edit a sub-installer account's email or phone",
         tag="users", body=SubInstallerEdit, roles=MAIN_INSTALLER)
    def edit_sub_installer(self, call: Call, account_id: str) -> Any:
        return self.accounts.edit_sub_installer(call.ctx, account_id, call.body)

    @api("POST", f"{SUB_INSTALLER}/reset-password", summary="Email a sub-installer a new "
         "password", tag="users", status=204, returns=None, roles=MAIN_INSTALLER,
         description="A new password is made and emailed; the old one stops working and every "
                     "session of the account ends.")
    def reset_sub_installer_password(self, call: Call, account_id: str) -> Any:
        self.accounts.reset_sub_installer_password(call.ctx, account_id)
        self.sessions.forget_account(account_id)

    @api("DELETE", SUB_INSTALLER, summary="Delete a sub-installer account", tag="users",
         status=204, returns=None, roles=MAIN_INSTALLER,
         description="Its sessions end at once; its username stays taken.")
    def delete_sub_installer(self, call: Call, account_id: str) -> Any:
        self.accounts.delete_sub_installer(call.ctx, account_id)
        self.sessions.forget_account(account_id)

    # --- property managers (manual: Users > Property Manager) -----------------------------

    @api("POST", f"{V1}/property-managers", summary="Create a property manager account",
         tag="users", body=PropertyManagerCreate, status=201, returns="Created",
         location=f"{V1}/property-managers/{{id}}", roles=MAIN_INSTALLER, errors=(409,),
         description=PROPERTY_MANAGER_DESCRIPTION)
    def create_property_manager(self, call: Call) -> Any:
        return self.accounts.create_property_manager(call.ctx, call.body)

    @api("GET", f"{V1}/property-managers", summary="The installer's property managers",
         tag="users", query=PropertyManagersQuery, returns="Page", roles=MAIN_INSTALLER)
    def list_property_managers(self, call: Call) -> Any:
        query = dict(call.query)
        if query.get("community_id") is not None:
            query["community_id"] = str(query["community_id"])
        return page(call, self.accounts.list_property_managers(call.ctx, query))

    @api("GET", PROPERTY_MANAGER_PATH, summary="Get a property manager account", tag="users",
         roles=MAIN_INSTALLER)
    def get_property_manager(self, call: Call, account_id: str) -> Any:
        return self.accounts.get_property_manager(call.ctx, account_id)

    @api("PATCH", PROPERTY_MANAGER_PATH, summary="Edit a property manager: names, settings, "
         "communities and permissions", tag="users", body=PropertyManagerEdit,
         roles=MAIN_INSTALLER)
    def edit_property_manager(self, call: Call, account_id: str) -> Any:
        edited = self.accounts.edit_property_manager(call.ctx, account_id, call.body)
        self.sessions.forget_account(account_id)  # its scope changed: ask accounts again
        return edited

    @api("POST", f"{PROPERTY_MANAGER_PATH}/reset-password", summary="Email a property manager "
         "a new password", tag="users", status=204, returns=None, roles=MAIN_INSTALLER,
         description="A new password is made and emailed; the old one stops working and every "
                     "session of the account ends.")
    def reset_property_manager_password(self, call: Call, account_id: str) -> Any:
        self.accounts.reset_property_manager_password(call.ctx, account_id)
        self.sessions.forget_account(account_id)

    @api("DELETE", PROPERTY_MANAGER_PATH, summary="Delete a property manager account",
         tag="users", status=204, returns=None, roles=MAIN_INSTALLER,
         description="Its sessions end at once; its email stays taken as a login.")
    def delete_property_manager(self, call: Call, account_id: str) -> Any:
        self.accounts.delete_property_manager(call.ctx, account_id)
        self.sessions.forget_account(account_id)

    # --- communities ------------------------------------------------------------------------

    @api("GET", f"{V1}/dashboard", summary="Dashboard figures", tag="communities",
         roles=SITES)
    def dashboard(self, call: Call) -> Any:
        return self.topology.dashboard(call.ctx)

    @api("GET", f"{V1}/communities", summary="List communities", tag="communities",
         query=CommunitiesQuery, returns="Page", roles=SITES)
    def list_communities(self, call: Call) -> Any:
        return page(call, self.topology.list_communities(call.ctx, call.query))

    @api("POST", f"{V1}/communities", summary="Create a community", tag="communities",
         body=CommunityCreate, status=201, returns="Created", location=f"{V1}/communities/{{id}}",
         roles=INSTALLER)
    def create_community(self, call: Call) -> Any:
        return created(self.topology.create_community(call.ctx, call.body))

    @api("GET", COMMUNITY, summary="Get a community", tag="communities", roles=SITES)
    def get_community(self, call: Call, community_id: str) -> Any:
        return self.topology.get_community(call.ctx, community_id)

    @api("PATCH", COMMUNITY, summary="Edit a community", tag="communities", body=CommunityEdit,
         roles=INSTALLER)
    def edit_community(self, call: Call, community_id: str) -> Any:
        return self.topology.edit_community(call.ctx, community_id, call.body)

    @api("DELETE", COMMUNITY, summary="Delete a community", tag="communities", status=204,
         returns=None, roles=INSTALLER, query=CascadeQuery, errors=(409,),
         description="One that still holds buildings is kept (409, saying what it holds) "
                     "unless `cascade=true`.")
    def delete_community(self, call: Call, community_id: str) -> Any:
        self.topology.delete_community(call.ctx, community_id, call.query["cascade"])

    @api("GET", f"{COMMUNITY}/residents", summary="List a community's residents",
         tag="residents", query=ResidentsQuery, returns="Page", roles=SITES)
    def list_residents(self, call: Call, community_id: str) -> Any:
        return page(call, self.topology.list_residents(call.ctx, community_id, call.query))

    # --- buildings --------------------------------------------------------------------------

    @api("GET", f"{COMMUNITY}/buildings", summary="List a community's buildings",
         tag="buildings", query=BuildingsQuery, returns="Page", roles=SITES)
    def list_buildings(self, call: Call, community_id: str) -> Any:
        return page(call, self.topology.list_buildings(call.ctx, community_id, call.query))

    @api("POST", f"{COMMUNITY}/buildings", summary="Add a building", tag="buildings",
         body=BuildingCreate, status=201, returns="Created", location=f"{V1}/buildings/{{id}}",
         roles=INSTALLER)
    def add_building(self, call: Call, community_id: str) -> Any:
        return created(self.topology.add_building(call.ctx, community_id, call.body))

    @api("GET", BUILDING, summary="Get a building", tag="buildings", roles=SITES)
    def get_building(self, call: Call, building_id: str) -> Any:
        return self.topology.get_building(call.ctx, building_id)

    @api("PATCH", BUILDING, summary="Edit a building", tag="buildings", body=BuildingEdit,
         roles=INSTALLER)
    def edit_building(self, call: Call, building_id: str) -> Any:
        return self.topology.edit_building(call.ctx, building_id, call.body)

    @api("DELETE", BUILDING, summary="Delete a building", tag="buildings", status=204,
         returns=None, roles=INSTALLER, query=CascadeQuery, errors=(409,),
         description="One that still holds APTs is kept (409, saying what it holds) unless "
                     "`cascade=true`.")
    def delete_building(self, call: Call, building_id: str) -> Any:
        self.topology.delete_building(call.ctx, building_id, call.query["cascade"])

    # --- apartments -------------------------------------------------------------------------

    @api("POST", f"{BUILDING}/apartments", summary="Add an apartment (APT) and its resident",
         tag="apartments", body=ApartmentCreate, status=201, returns="Created",
         location=f"{V1}/apartments/{{id}}", roles=INSTALLER)
    def add_apartment(self, call: Call, building_id: str) -> Any:
        return created(self.topology.add_apartment(call.ctx, building_id, call.body))

    @api("GET", APARTMENT, summary="Get an apartment", tag="apartments", roles=SITES)
    def get_apartment(self, call: Call, apartment_id: str) -> Any:
        return self.topology.get_apartment(call.ctx, apartment_id)

    @api("PATCH", APARTMENT, summary="Edit an apartment and its resident", tag="apartments",
         body=ApartmentEdit, roles=SITES)
    def edit_apartment(self, call: Call, apartment_id: str) -> Any:
        return self.topology.edit_apartment(call.ctx, apartment_id, call.body)

    @api("DELETE", APARTMENT, summary="Delete an apartment", tag="apartments", status=204,
         returns=None, roles=INSTALLER)
    def delete_apartment(self, call: Call, apartment_id: str) -> Any:
        self.topology.delete_apartment(call.ctx, apartment_id)

    @api("POST", f"{APARTMENT}/reset", summary="Reset an apartment (manual: Reset)",
         tag="apartments", roles=SITES)
    def reset_apartment(self, call: Call, apartment_id: str) -> Any:
        return self.topology.reset_apartment(call.ctx, apartment_id)

    @api("GET", f"{APARTMENT}/history", summary="An apartment's event history, oldest first",
         tag="apartments", query=PageQuery, returns="Page", roles=SITES)
    def apartment_history(self, call: Call, apartment_id: str) -> Any:
        return page(call, self.topology.apartment_history(call.ctx, apartment_id, call.query))

    # --- family members (manual "Add/Edit/Delete Family Members") ---------------------------

    @api("POST", f"{APARTMENT}/family-members", summary="Add a family member's app account",
         tag="residents", body=FamilyMemberCreate, status=201, returns="Created",
         location=f"{V1}/family-members/{{id}}", roles=SITES, errors=(402,),
         description=FAMILY_DESCRIPTION)
    def add_family_member(self, call: Call, apartment_id: str) -> Any:
        return self.accounts.add_family_member(call.ctx, apartment_id, call.body)

    @api("GET", f"{APARTMENT}/family-members", summary="The family members of an APT's "
         "resident, and how many free accounts are left", tag="residents", roles=SITES)
    def list_family_members(self, call: Call, apartment_id: str) -> Any:
        return self.accounts.list_family_members(call.ctx, apartment_id)

    @api("GET", FAMILY_MEMBER, summary="Get a family member's account", tag="residents",
         roles=SITES)
    def get_family_member(self, call: Call, family_member_id: str) -> Any:
        return self.accounts.get_family_member(call.ctx, family_member_id)

    @api("PATCH", FAMILY_MEMBER, summary="Edit a family member: names and mobile",
         tag="residents", body=FamilyMemberEdit, roles=SITES,
         description="The email cannot be edited (422 naming `email`).")
    def edit_family_member(self, call: Call, family_member_id: str) -> Any:
        return self.accounts.edit_family_member(call.ctx, family_member_id, call.body)

    @api("DELETE", FAMILY_MEMBER, summary="Delete a family member's account", tag="residents",
         status=204, returns=None, roles=SITES,
         description="The free account it took is not given back (a reset of the APT does).")
    def remove_family_member(self, call: Call, family_member_id: str) -> Any:
        self.accounts.remove_family_member(call.ctx, family_member_id)

    # --- MAC library ------------------------------------------------------------------------

    @api("POST", INSTALLER_MACS, summary="Register a MAC to an installer", tag="mac-library",
         body=MacRegister, roles=DISTRIBUTOR, status=201, errors=(409,))
    def register_mac(self, call: Call, installer_id: str) -> Any:
        return self.devices.register_mac(call.ctx, installer_id, call.body)

    @api("POST", f"{INSTALLER_MACS}/import", summary="Register MACs from a CSV",
         tag="mac-library", body=MacImport, roles=DISTRIBUTOR,
         description=MAC_IMPORT_DESCRIPTION)
    def import_macs(self, call: Call, installer_id: str) -> Any:
        return self.devices.import_macs(call.ctx, installer_id, call.body)

    @api("GET", f"{V1}/mac-library", summary="The installer's MAC library", tag="mac-library",
         query=MacLibraryQuery, returns="Page", roles=INSTALLER)
    def list_macs(self, call: Call) -> Any:
        return page(call, self.devices.list_macs(call.ctx, call.query))

    @api("DELETE", f"{V1}/mac-library/<string:mac>", summary="Remove a MAC from the library",
         tag="mac-library", status=204, returns=None, roles=INSTALLER, errors=(409,),
         description="A MAC that a device uses is kept (409) until the device is deleted.")
    def remove_mac(self, call: Call, mac: str) -> Any:
        self.devices.remove_mac(call.ctx, mac)

    # --- intercom devices -------------------------------------------------------------------

    @api("POST", f"{COMMUNITY}/devices", summary="Add a device to a community's public area",
         tag="devices", body=DeviceCreate, status=201, returns="Created",
         location=f"{V1}/devices/{{id}}", roles=INSTALLER, errors=(409,))
    def add_community_device(self, call: Call, community_id: str) -> Any:
        return self.devices.add_device(call.ctx, "community", community_id, call.body)

    @api("POST", f"{BUILDING}/devices", summary="Add a device to a building's public area",
         tag="devices", body=DeviceCreate, status=201, returns="Created",
         location=f"{V1}/devices/{{id}}", roles=INSTALLER, errors=(409,))
    def add_building_device(self, call: Call, building_id: str) -> Any:
        return self.devices.add_device(call.ctx, "building", building_id, call.body)

    @api("POST", f"{APARTMENT}/devices", summary="Add a device to an apartment",
         tag="devices", body=DeviceCreate, status=201, returns="Created",
         location=f"{V1}/devices/{{id}}", roles=INSTALLER, errors=(409,))
    def add_apartment_device(self, call: Call, apartment_id: str) -> Any:
        return self.devices.add_device(call.ctx, "apartment", apartment_id, call.body)

    @api("POST", f"{COMMUNITY}/devices/import", summary="Add devices to a community's public "
         "area with the template's Device Setting Format", tag="devices", body=DeviceImport,
         roles=INSTALLER, description=DEVICE_IMPORT_DESCRIPTION)
    def import_community_devices(self, call: Call, community_id: str) -> Any:
        return self.devices.import_devices(call.ctx, "community", community_id, call.body)

    @api("POST", f"{BUILDING}/devices/import", summary="Add devices to a building's public "
         "area with the template's Device Setting Format", tag="devices", body=DeviceImport,
         roles=INSTALLER, description=DEVICE_IMPORT_DESCRIPTION)
    def import_building_devices(self, call: Call, building_id: str) -> Any:
        return self.devices.import_devices(call.ctx, "building", building_id, call.body)

    @api("POST", f"{APARTMENT}/devices/import", summary="Add devices to an apartment with the "
         "template's Device Setting Format", tag="devices", body=DeviceImport,
         roles=INSTALLER, description=DEVICE_IMPORT_DESCRIPTION)
    def import_apartment_devices(self, call: Call, apartment_id: str) -> Any:
        return self.devices.import_devices(call.ctx, "apartment", apartment_id, call.body)

    @api("GET", f"{COMMUNITY}/devices", summary="List a community's devices (every area)",
         tag="devices", query=DevicesQuery, returns="Page", roles=SITES)
    def list_community_devices(self, call: Call, community_id: str) -> Any:
        return page(call, self.devices.list_devices(call.ctx, "community", community_id,
                                                    call.query))

    @api("GET", f"{BUILDING}/devices", summary="List a building's devices (its APTs' too)",
         tag="devices", query=DevicesQuery, returns="Page", roles=SITES)
    def list_building_devices(self, call: Call, building_id: str) -> Any:
        return page(call, self.devices.list_devices(call.ctx, "building", building_id,
                                                    call.query))

    @api("GET", f"{APARTMENT}/devices", summary="List an apartment's devices", tag="devices",
         query=DevicesQuery, returns="Page", roles=SITES)
    def list_apartment_devices(self, call: Call, apartment_id: str) -> Any:
        return page(call, self.devices.list_devices(call.ctx, "apartment", apartment_id,
                                                    call.query))

    @api("GET", DEVICE, summary="Get a device (Device Info)", tag="devices", roles=SITES)
    def get_device(self, call: Call, device_id: str) -> Any:
        return self.devices.get_device(call.ctx, device_id)

    @api("PATCH", DEVICE, summary="Edit a device", tag="devices", body=DeviceEdit,
         roles=INSTALLER)
    def edit_device(self, call: Call, device_id: str) -> Any:
        return self.devices.edit_device(call.ctx, device_id, call.body)

    @api("DELETE", DEVICE, summary="Delete a device (its MAC is free again)", tag="devices",
         status=204, returns=None, roles=INSTALLER)
    def remove_device(self, call: Call, device_id: str) -> Any:
        self.devices.remove_device(call.ctx, device_id)

    @api("GET", f"{DEVICE}/history", summary="A device's event history, oldest first",
         tag="devices", query=PageQuery, returns="Page", roles=SITES)
    def device_history(self, call: Call, device_id: str) -> Any:
        return page(call, self.devices.device_history(call.ctx, device_id, call.query))

    # --- remote operations (manual: "Remote Configuration and Maintenance") ------------------

    @api("POST", f"{DEVICE}/commands", summary="Reboot or reset a device, set its connection "
         "type, or send it Autop commands", tag="devices", body=CommandCreate, status=201,
         returns="Created", location=f"{V1}/commands/{{id}}", roles=INSTALLER,
         description=COMMAND_DESCRIPTION)
    def queue_command(self, call: Call, device_id: str) -> Any:
        return self.devices.queue_command(call.ctx, device_id, call.body)

    @api("GET", f"{DEVICE}/commands", summary="A device's remote operations, newest first",
         tag="devices", query=CommandsQuery, returns="Page", roles=SITES)
    def list_commands(self, call: Call, device_id: str) -> Any:
        return page(call, self.devices.list_commands(call.ctx, device_id, call.query))

    @api("GET", f"{V1}/commands/<uuid:command_id>", summary="A remote operation: its state and "
         "history", tag="devices", roles=SITES)
    def get_command(self, call: Call, command_id: str) -> Any:
        return self.devices.get_command(call.ctx, command_id)

    # --- device traffic: door and call logs (the portal's logs) -----------------------------

    def _log(self, call: Call, kind: str, scope: str, scope_id: str) -> Any:
        return page(call, self.devices.traffic_log(call.ctx, kind, scope, scope_id, call.query))

    @api("GET", f"{COMMUNITY}/door-logs", summary="A community's door log, newest first",
         tag="logs", query=LogQuery, returns="Page", roles=SITES)
    def community_door_log(self, call: Call, community_id: str) -> Any:
        return self._log(call, "door", "community", community_id)

    @api("GET", f"{BUILDING}/door-logs", summary="A building's door log, newest first",
         tag="logs", query=LogQuery, returns="Page", roles=SITES)
    def building_door_log(self, call: Call, building_id: str) -> Any:
        return self._log(call, "door", "building", building_id)

    @api("GET", f"{APARTMENT}/door-logs", summary="An apartment's door log, newest first",
         tag="logs", query=LogQuery, returns="Page", roles=SITES)
    def apartment_door_log(self, call: Call, apartment_id: str) -> Any:
        return self._log(call, "door", "apartment", apartment_id)

    @api("GET", f"{DEVICE}/door-logs", summary="A device's door log, newest first",
         tag="logs", query=LogQuery, returns="Page", roles=SITES)
    def device_door_log(self, call: Call, device_id: str) -> Any:
        return self._log(call, "door", "device", device_id)

    @api("GET", f"{COMMUNITY}/call-logs", summary="A community's call history, newest first",
         tag="logs", query=LogQuery, returns="Page", roles=SITES)
    def community_call_log(self, call: Call, community_id: str) -> Any:
        return self._log(call, "call", "community", community_id)

    @api("GET", f"{BUILDING}/call-logs", summary="A building's call history, newest first",
         tag="logs", query=LogQuery, returns="Page", roles=SITES)
    def building_call_log(self, call: Call, building_id: str) -> Any:
        return self._log(call, "call", "building", building_id)

    @api("GET", f"{APARTMENT}/call-logs", summary="An apartment's call history, newest first",
         tag="logs", query=LogQuery, returns="Page", roles=SITES)
    def apartment_call_log(self, call: Call, apartment_id: str) -> Any:
        return self._log(call, "call", "apartment", apartment_id)

    @api("GET", f"{DEVICE}/call-logs", summary="A device's call history, newest first",
         tag="logs", query=LogQuery, returns="Page", roles=SITES)
    def device_call_log(self, call: Call, device_id: str) -> Any:
        return self._log(call, "call", "device", device_id)

    # --- third-party cameras and locks -------------------------------------------------------

    @api("POST", f"{COMMUNITY}/cameras", summary="Add a camera to a community's public area",
         tag="third-party", body=CameraCreate, status=201, returns="Created",
         location=f"{V1}/cameras/{{id}}", roles=INSTALLER)
    def add_community_camera(self, call: Call, community_id: str) -> Any:
        return created(self.devices.add_third_party(call.ctx, "camera", "community", community_id,
                                                    call.body))

    @api("GET", f"{COMMUNITY}/cameras", summary="List the cameras of a community's public area",
         tag="third-party", query=ThirdPartyQuery, returns="Page", roles=SITES)
    def list_community_cameras(self, call: Call, community_id: str) -> Any:
        return page(call, self.devices.list_third_party(
            call.ctx, "camera", "community", community_id, call.query))

    @api("POST", f"{BUILDING}/cameras", summary="Add a camera to a building's public area",
         tag="third-party", body=CameraCreate, status=201, returns="Created",
         location=f"{V1}/cameras/{{id}}", roles=INSTALLER)
    def add_building_camera(self, call: Call, building_id: str) -> Any:
        return created(self.devices.add_third_party(call.ctx, "camera", "building", building_id,
                                                    call.body))

    @api("GET", f"{BUILDING}/cameras", summary="List the cameras of a building's public area",
         tag="third-party", query=ThirdPartyQuery, returns="Page", roles=SITES)
    def list_building_cameras(self, call: Call, building_id: str) -> Any:
        return page(call, self.devices.list_third_party(
            call.ctx, "camera", "building", building_id, call.query))

    @api("POST", f"{APARTMENT}/cameras", summary="Add a camera to an apartment",
         tag="third-party", body=CameraCreate, status=201, returns="Created",
         location=f"{V1}/cameras/{{id}}", roles=INSTALLER)
    def add_apartment_camera(self, call: Call, apartment_id: str) -> Any:
        return created(self.devices.add_third_party(call.ctx, "camera", "apartment", apartment_id,
                                                    call.body))

    @api("GET", f"{APARTMENT}/cameras", summary="List the cameras of an apartment",
         tag="third-party", query=ThirdPartyQuery, returns="Page", roles=SITES)
    def list_apartment_cameras(self, call: Call, apartment_id: str) -> Any:
        return page(call, self.devices.list_third_party(
            call.ctx, "camera", "apartment", apartment_id, call.query))

    @api("GET", f"{V1}/cameras/<uuid:camera_id>", summary="Get a camera",
         tag="third-party", roles=SITES)
    def get_camera(self, call: Call, camera_id: str) -> Any:
        return self.devices.get_third_party(call.ctx, "camera", camera_id)

    @api("PATCH", f"{V1}/cameras/<uuid:camera_id>", summary="Edit a third-party camera",
         tag="third-party", body=CameraEdit, roles=INSTALLER)
    def edit_camera(self, call: Call, camera_id: str) -> Any:
        return self.devices.edit_third_party(call.ctx, "camera", camera_id, call.body)

    @api("DELETE", f"{V1}/cameras/<uuid:camera_id>", summary="Delete a third-party camera",
         tag="third-party", status=204, returns=None, roles=INSTALLER)
    def remove_camera(self, call: Call, camera_id: str) -> Any:
        self.devices.remove_third_party(call.ctx, "camera", camera_id)

    @api("POST", f"{COMMUNITY}/locks", summary="Add a lock to a community's public area",
         tag="third-party", body=LockCreate, status=201, returns="Created",
         location=f"{V1}/locks/{{id}}", roles=INSTALLER, errors=(409,))
    def add_community_lock(self, call: Call, community_id: str) -> Any:
        return created(self.devices.add_third_party(call.ctx, "lock", "community", community_id,
                                                    call.body))

    @api("GET", f"{COMMUNITY}/locks", summary="List the locks of a community's public area",
         tag="third-party", query=ThirdPartyQuery, returns="Page", roles=SITES)
    def list_community_locks(self, call: Call, community_id: str) -> Any:
        return page(call, self.devices.list_third_party(
            call.ctx, "lock", "community", community_id, call.query))

    @api("POST", f"{BUILDING}/locks", summary="Add a lock to a building's public area",
         tag="third-party", body=LockCreate, status=201, returns="Created",
         location=f"{V1}/locks/{{id}}", roles=INSTALLER, errors=(409,))
    def add_building_lock(self, call: Call, building_id: str) -> Any:
        return created(self.devices.add_third_party(call.ctx, "lock", "building", building_id,
                                                    call.body))

    @api("GET", f"{BUILDING}/locks", summary="List the locks of a building's public area",
         tag="third-party", query=ThirdPartyQuery, returns="Page", roles=SITES)
    def list_building_locks(self, call: Call, building_id: str) -> Any:
        return page(call, self.devices.list_third_party(
            call.ctx, "lock", "building", building_id, call.query))

    @api("POST", f"{APARTMENT}/locks", summary="Add a lock to an apartment",
         tag="third-party", body=LockCreate, status=201, returns="Created",
         location=f"{V1}/locks/{{id}}", roles=INSTALLER, errors=(409,))
    def add_apartment_lock(self, call: Call, apartment_id: str) -> Any:
        return created(self.devices.add_third_party(call.ctx, "lock", "apartment", apartment_id,
                                                    call.body))

    @api("GET", f"{APARTMENT}/locks", summary="List the locks of an apartment",
         tag="third-party", query=ThirdPartyQuery, returns="Page", roles=SITES)
    def list_apartment_locks(self, call: Call, apartment_id: str) -> Any:
        return page(call, self.devices.list_third_party(
            call.ctx, "lock", "apartment", apartment_id, call.query))

    @api("GET", f"{V1}/locks/<uuid:lock_id>", summary="Get a lock",
         tag="third-party", roles=SITES)
    def get_lock(self, call: Call, lock_id: str) -> Any:
        return self.devices.get_third_party(call.ctx, "lock", lock_id)

    @api("PATCH", f"{V1}/locks/<uuid:lock_id>", summary="Edit a third-party lock",
         tag="third-party", body=LockEdit, roles=INSTALLER)
    def edit_lock(self, call: Call, lock_id: str) -> Any:
        return self.devices.edit_third_party(call.ctx, "lock", lock_id, call.body)

    @api("DELETE", f"{V1}/locks/<uuid:lock_id>", summary="Delete a third-party lock",
         tag="third-party", status=204, returns=None, roles=INSTALLER)
    def remove_lock(self, call: Call, lock_id: str) -> Any:
        self.devices.remove_third_party(call.ctx, "lock", lock_id)

    # --- resident credentials ---------------------------------------------------------------

    @api("GET", f"{APARTMENT}/credentials", summary="An apartment's access credentials",
         tag="credentials", roles=SITES)
    def list_credentials(self, call: Call, apartment_id: str) -> Any:
        return self.devices.list_credentials(call.ctx, apartment_id)

    @api("POST", f"{APARTMENT}/credentials", summary="Add an access credential (PIN, RF card, "
         "face, NFC, Bluetooth)", tag="credentials", body=CredentialCreate, status=201,
         returns="Created", roles=SITES, errors=(409,),
         description="A PIN, RF card or NFC tag is unique within the community; any "
                     "credential is unique within its APT. An APT's reset wipes its PINs, "
                     "faces, NFC tags and Bluetooth phones (RF cards stay).")
    def add_credential(self, call: Call, apartment_id: str) -> Any:
        return created(self.devices.add_credential(call.ctx, apartment_id, call.body))

    @api("DELETE", f"{APARTMENT}/credentials/<uuid:credential_id>",
         summary="Remove an access credential", tag="credentials", status=204, returns=None,
         roles=SITES)
    def remove_credential(self, call: Call, apartment_id: str, credential_id: str) -> Any:
        self.devices.remove_credential(call.ctx, apartment_id, credential_id)


@cache
def _document() -> dict[str, Any]:
    return openapi.document(routes_of(GatewayService))
