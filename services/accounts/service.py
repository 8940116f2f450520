"""The accounts nameko service: login, sessions, installer accounts, residents' master accounts.

Thin: each entrypoint loads its payload with a contract schema and calls the application; how
the context is wired (hasher, read models, policy, bootstrap distributor) is its declaration's.
"""

from __future__ import annotations

from typing import Any

from concierge import context
from concierge.rpc import command, rpc, translated
from concierge.runtime import Runtime, ServiceBase
from contracts import load
from contracts.accounts import LoginRequest
from services.accounts.declaration import CONTEXT


class AccountsService(ServiceBase):
    name = CONTEXT.name
    runtime = Runtime(CONTEXT.wire)

    @rpc(sensitive_arguments=("payload.password",))
    @translated
    def login(self, payload: dict[str, Any], ctx: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        """-> {token, expires_at, role, account_id}; Unauthorized alike for any bad pair.
        `ctx`: the gateway's (its deadline, and the Idempotency-Key of a retried login)."""
        request = load(LoginRequest, payload)
        with context.acting(ctx):
            return self.runtime.app.login(request["username"], request["password"])

    @rpc(sensitive_arguments=("payload.code",))
    @command
    def verify_login(self, ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        """-> the session, for a login's challenge and its emailed code."""
        return self.runtime.app.verify_login(payload)

    @rpc
    @command
    def edit_account(self, ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return self.runtime.app.set_own_two_factor(payload)

    @rpc
    @command
    def installer_settings(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return self.runtime.app.installer_settings()

    @rpc
    @command
    def edit_installer_settings(self, ctx: dict[str, Any], payload: dict[str, Any]
                                ) -> dict[str, Any]:
        return self.runtime.app.edit_installer_settings(payload)

    @rpc
    @translated
    def logout(self, token: str) -> None:
        self.runtime.app.logout(token)

    @rpc
    @command
    def account(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return self.runtime.app.account()

    @rpc(sensitive_arguments=("token", "payload.current_password", "payload.new_password"))
    @command
    def change_password(self, ctx: dict[str, Any], token: str, payload: dict[str, Any]) -> None:
        self.runtime.app.change_password(token, payload)

    @rpc
    @command
    def logout_everywhere(self, ctx: dict[str, Any]) -> int:
        return self.runtime.app.logout_everywhere()

    @rpc
    @translated
    def authenticate(self, token: str) -> dict[str, Any]:
        """-> {account_id, role, username, installer_id}; what the gateway scopes queries by."""
        return self.runtime.app.authenticate(token)

    @rpc
    @command
    def create_installer(self, ctx: dict[str, Any], payload: dict[str, Any]) -> str:
        """-> the new installer's account id; only a distributor (ctx account_id) may."""
        caller = (ctx or {}).get("account_id")
        return self.runtime.app.create_installer(payload, distributor_id=caller)

    @rpc
    @command
    def get_master_account(self, ctx: dict[str, Any], apartment_id: str) -> dict[str, Any]:
        """-> the master account row; NotFound unless it belongs to the caller's installer."""
        return self.runtime.app.get_master_account(
            apartment_id, installer_id=context.current().installer_id)

    # --- sub-installers (manual "Sub-Installer Account"); the caller is the main installer ---

    @rpc
    @command
    def create_sub_installer(self, ctx: dict[str, Any], payload: dict[str, Any]
                             ) -> dict[str, Any]:
        return self.runtime.app.create_sub_installer(payload)

    @rpc
    @command
    def list_sub_installers(self, ctx: dict[str, Any], query: dict[str, Any] | None = None
                            ) -> dict[str, Any]:
        return self.runtime.app.list_sub_installers(query or {})

    @rpc
    @command
    def get_sub_installer(self, ctx: dict[str, Any], account_id: str) -> dict[str, Any]:
        return self.runtime.app.get_sub_installer(account_id)

    @rpc
    @command
    def edit_sub_installer(self, ctx: dict[str, Any], account_id: str,
                           payload: dict[str, Any]) -> dict[str, Any]:
        return self.runtime.app.edit_sub_installer(account_id, payload)

    @rpc
    @command
    def reset_sub_installer_password(self, ctx: dict[str, Any], account_id: str) -> None:
        self.runtime.app.reset_sub_installer_password(account_id)

    @rpc
    @command
    def delete_sub_installer(self, ctx: dict[str, Any], account_id: str) -> None:
        self.runtime.app.delete_sub_installer(account_id)

    @rpc
    @translated
    def reveal_secret(self, kind: str, account_id: str, issue: int) -> str | None:
        """Notify's mailer only, for the email that carries an issued password or a reset
        link: None once it is no longer the account's. Not routed by the gateway."""
        return self.runtime.app.reveal_secret(kind, account_id, issue)

    @rpc
    @command
    def forgot_password(self, ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        self.runtime.app.forgot_password(payload)

    @rpc(sensitive_arguments=("payload.token", "payload.new_password"))
    @command
    def reset_password(self, ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        self.runtime.app.reset_password(payload)

    # --- property managers (manual "Property Manager Account"); the caller is the installer --

    @rpc
    @command
    def create_property_manager(self, ctx: dict[str, Any], payload: dict[str, Any]
                                ) -> dict[str, Any]:
        return self.runtime.app.create_property_manager(payload)

    @rpc
    @command
    def list_property_managers(self, ctx: dict[str, Any], query: dict[str, Any] | None = None
                               ) -> dict[str, Any]:
        return self.runtime.app.list_property_managers(query or {})

    @rpc
    @command
    def get_property_manager(self, ctx: dict[str, Any], account_id: str) -> dict[str, Any]:
        return self.runtime.app.get_property_manager(account_id)

    @rpc
    @command
    def edit_property_manager(self, ctx: dict[str, Any], account_id: str,
                              payload: dict[str, Any]) -> dict[str, Any]:
        return self.runtime.app.edit_property_manager(account_id, payload)

    @rpc
    @command
    def reset_property_manager_password(self, ctx: dict[str, Any], account_id: str) -> None:
        self.runtime.app.reset_property_manager_password(account_id)

    @rpc
    @command
    def delete_property_manager(self, ctx: dict[str, Any], account_id: str) -> None:
        self.runtime.app.delete_property_manager(account_id)

    # --- family members (manual "Add/Edit/Delete Family Members") ----------------------------

    @rpc
    @command
    def add_family_member(self, ctx: dict[str, Any], apartment_id: str,
                          payload: dict[str, Any]) -> dict[str, Any]:
        return self.runtime.app.add_family_member(apartment_id, payload)

    @rpc
    @command
    def list_family_members(self, ctx: dict[str, Any], apartment_id: str) -> dict[str, Any]:
        return self.runtime.app.list_family_members(apartment_id)

    @rpc
    @command
    def get_family_member(self, ctx: dict[str, Any], member_id: str) -> dict[str, Any]:
        return self.runtime.app.get_family_member(member_id)

    @rpc
    @command
    def edit_family_member(self, ctx: dict[str, Any], member_id: str,
                           payload: dict[str, Any]) -> dict[str, Any]:
        return self.runtime.app.edit_family_member(member_id, payload)

    @rpc
    @command
    def remove_family_member(self, ctx: dict[str, Any], member_id: str) -> None:
        self.runtime.app.remove_family_member(member_id)
