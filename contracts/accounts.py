"""Accounts contracts: login and installer payloads, the authenticated principal, and the data of
every accounts event.

Request schemas refuse unknown fields (a typo is an error, not a silent no-op); they are the one
check of a request's shape (services/accounts/domain.py keeps the rules that need state). Event
schemas ignore them, as the envelope's version rule asks of subscribers. Secrets
(`PRIVATE_FIELDS`) live in the accounts store only: no event schema declares them and they must
never leave the service.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from contracts.fields import EMAIL_PATTERN, Boolean, Email, Text
from contracts.topology import LANGUAGE_REGEX, phone_field, time_zone_rule

__all__ = [
    "EVENT_SCHEMAS",
    "EVENT_VERSION",
    "AccountEdit",
    "DistributorCreate",
    "FamilyMemberAddedSchema",
    "FamilyMemberCreate",
    "FamilyMemberEdit",
    "FamilyMemberEditedSchema",
    "FamilyMemberRemovedSchema",
    "FamilySipClaimedSchema",
    "InstallerCreate",
    "InstallerSettings",
    "InstallerSettingsSetSchema",
    "LoginChallengePassedSchema",
    "LoginChallengedSchema",
    "LoginCodeFailedSchema",
    "LoginRequest",
    "LoginResponse",
    "LoginVerify",
    "MasterAccountClosedSchema",
    "MasterAccountContactChangedSchema",
    "MasterAccountCreatedSchema",
    "MasterAccountRegisteredSchema",
    "MasterAccountResetSchema",
    "PasswordChange",
    "PasswordChangedSchema",
    "PasswordForgotten",
    "PasswordIssuedSchema",
    "PasswordReset",
    "PasswordResetCompletedSchema",
    "PasswordResetRequestedSchema",
    "PortalAccountCreatedSchema",
    "PortalAccountDeletedSchema",
    "PortalAccountEditedSchema",
    "Principal",
    "PropertyManagerCreate",
    "PropertyManagerEdit",
    "PropertyManagerSetSchema",
    "SessionClosedSchema",
    "SessionOpenedSchema",
    "SessionsEndedSchema",
    "SubInstallerCreate",
    "SubInstallerEdit",
    "TwoFactorChallenge",
    "TwoFactorSetSchema",
    "ValidationError",
]

EVENT_VERSION = 1

# The manual states no rule for portal passwords; its "cannot contain @ : /" is about third-party
# camera passwords. Names: the import template says they "should not be more than 64 characters".
USERNAME_MAX = 64
USERNAME_REGEX = r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z"  # \Z: "$" would let a trailing newline in
EMAIL_MAX = 254
PASSWORD_MIN = 8
PASSWORD_MAX = 64
NAME_MAX = 64
# A sub-installer (manual "Sub-Installer Account") logs in to its main installer's data.
PORTAL_ROLES = ("distributor", "installer", "sub_installer", "property_manager")
# The roles that work on an installer's sites (the call context's installer_id names whose).
INSTALLER_ROLES = ("installer", "sub_installer")
PROPERTY_MANAGER = "property_manager"
# What a property manager may do in one assigned community (manual "Property Manager Account"):
# its SmartPlus app on or off, deleting residents' accounts (an APT's reset), the door and call
# logs (Log Access Control).
PM_PERMISSIONS = ("app", "delete_account", "log_access_control")
PM_COMMUNITIES_MAX = 500
PM_SORTS = ("name", "email", "created_at")
# Family member accounts of one master account that cost nothing (manual: "You can create three
# free family member accounts for each master account"); the fourth and later need an Additional
# App (billing). A reset frees them again; a delete does not ("free ... after resetting, while
# it charges after deleting").
FREE_FAMILY_MEMBERS = 3
# App accounts' SIP numbers: 10 digits starting 58 (devices' start 59), unique platform-wide.
FAMILY_SIP_PREFIX = "58"
SIP_DIGITS = 10
ADDITIONAL_APP_NEEDED = (f"An Additional App is needed: the {FREE_FAMILY_MEMBERS} free family "
                         "member accounts of this master account are used (a deleted one still "
                         "counts until the APT is reset).")
# Sub-account list: "Account" is the sortable column; the newest first by default.
SUB_ACCOUNT_SORTS = ("username", "created_at")
# A password the platform makes (a new sub-account's, a reset's): emailed, never shown.
GENERATED_PASSWORD_LENGTH = 12
# Why an account's sessions ended all at once (SessionsEnded).
SESSIONS_ENDED_REASONS = ("deleted", "password_reset", "password_changed", "logout_everywhere")
PASSWORD_ISSUE_REASONS = ("welcome", "reset")
# Sessions an account keeps open at once; a login beyond them ends the oldest (the API says so).
MAX_SESSIONS = 20
APP_STATUSES = ("unregistered", "registered")

# Email two-factor login (manual: "a verification code for login"): a code of this many digits,
# good for this long and this many tries.
CODE_DIGITS = 6
CODE_SECONDS = 10 * 60
CODE_TRIES = 5

# A forgotten password's emailed link works once, within this time.
RESET_LINK_SECONDS = 60 * 60
RESET_TOKEN_MAX = 200
# Links asked for one username, or from one address, within 15 minutes before more are refused.
RESET_LIMITS = {"user": 3, "addr": 20}

# Failed logins (manual: none stated; OWASP's advice): 5 wrong passwords for one username from
# one address, 20 for one username from anywhere, or 50 from one address for any usernames,
# within 15 minutes, lock that key for 15 minutes, whether or not the username exists.
LOGIN_LIMITS = {"pair": 5, "user": 20, "addr": 50}
LOCKOUT_WINDOW_SECONDS = 15 * 60
LOCKOUT_SECONDS = 15 * 60

# Event attributes kept in the accounts store and stripped from anything published.
PRIVATE_FIELDS = frozenset({"password_hash", "token_digest", "token_digests", "member",
                            "settings",
                            "password_sealed", "password_subject", "reset_digest",
                            "reset_sealed", "reset_subject", "code_digest", "code_sealed",
                            "code_subject", "challenge_digest"})


def _username(**kwargs: object) -> Text:
    return Text(
        required=True,
        validate=[
            validate.Length(min=1, max=USERNAME_MAX),
            validate.Regexp(
                USERNAME_REGEX,
                error="Username may hold only letters, digits, '.', '_' and '-', starting with "
                "a letter or digit.",
            ),
        ],
        **kwargs,
    )


def _password(**kwargs: object) -> Text:
    return Text(required=True, validate=validate.Length(min=PASSWORD_MIN, max=PASSWORD_MAX),
                **kwargs)


def _email_address(value: str) -> None:
    """The platform's one email rule (`contracts.fields.EMAIL_PATTERN`), on top of
    marshmallow's: an address one context takes, every other takes too."""
    if not EMAIL_PATTERN.fullmatch(value):
        raise ValidationError("Not a valid email address.")


# --- requests and responses ----------------------------------------------------------------


class LoginRequest(Schema):
    """POST /api/v1/auth/login. No minimum length here: a login only checks, it sets nothing.
    A property manager's username is its email."""

    username = Text(required=True, validate=validate.Length(min=1, max=EMAIL_MAX))
    password = Text(required=True, validate=validate.Length(min=1, max=PASSWORD_MAX))


class TwoFactorChallenge(Schema):
    """A login that needs the emailed code: send it with `challenge` to /auth/login/verify."""

    challenge = fields.String(required=True)
    expires_at = fields.AwareDateTime(required=True)
    sent_to = fields.String(required=True, metadata={"description": "the email, masked"})


class LoginResponse(Schema):
    """A session (`token`), or, for an account with two-factor login, no token yet and the
    `two_factor` challenge whose code was emailed."""

    token = fields.String(required=True, allow_none=True)
    expires_at = fields.AwareDateTime(required=True, allow_none=True)
    role = fields.String(required=True, validate=validate.OneOf(PORTAL_ROLES))
    account_id = fields.UUID(required=True)
    two_factor = fields.Nested(TwoFactorChallenge, load_default=None, allow_none=True)


class LoginVerify(Schema):
    """POST /api/v1/auth/login/verify: the challenge a login answered and the emailed code."""

    challenge = Text(required=True, validate=validate.Length(min=1, max=RESET_TOKEN_MAX))
    code = Text(required=True, validate=validate.Regexp(
        rf"^[0-9]{{{CODE_DIGITS}}}\Z", error=f"The code is {CODE_DIGITS} digits."))


def _optional_email() -> Email:
    return Email(allow_none=True, validate=[validate.Length(max=EMAIL_MAX), _email_address])


def _line(limit: int = 255) -> Text:
    return Text(allow_none=True, validate=validate.Length(max=limit))


class BillingInformation(Schema):
    """Setting > Billing Information (manual): what an invoice names."""

    company = _line()
    attn = _line()
    address = _line(500)
    tel = phone_field()
    fax = phone_field()
    email = _optional_email()


class CustomerService(Schema):
    """Setting > Customer Service: how the installer's customers reach it."""

    phone = phone_field()
    email = _optional_email()
    receive_feedback = Boolean()


class InstallerSettings(Schema):
    """PATCH /api/v1/account/settings (manual "Setting"): each part given replaces that part;
    `allow_distributor_access` is off until the installer turns it on."""

    time_zone = Text(validate=time_zone_rule)
    billing = fields.Nested(BillingInformation)
    customer_service = fields.Nested(CustomerService)
    notification_email = _optional_email()
    notifications = Boolean(metadata={"description": "emails from the platform on"})
    allow_distributor_access = Boolean()


INSTALLER_SETTINGS_DEFAULTS: dict[str, object] = {
    "time_zone": "UTC",
    "billing": {"company": None, "attn": None, "address": None, "tel": None, "fax": None,
                "email": None},
    "customer_service": {"phone": None, "email": None, "receive_feedback": False},
    "notification_email": None,
    "notifications": True,
    "allow_distributor_access": False,
}


class AccountEdit(Schema):
    """PATCH /api/v1/account: the caller's own settings."""

    two_factor = Boolean(metadata={"description": "email two-factor login"})


class InstallerCreate(Schema):
    """A distributor creates an installer; the portal sends the login password to the email."""

    username = _username()
    password = _password()
    email = Email(required=True, validate=[validate.Length(max=EMAIL_MAX), _email_address])


def _required_email() -> Email:
    return Email(required=True, validate=[validate.Length(max=EMAIL_MAX), _email_address])


class SubInstallerCreate(Schema):
    """POST /api/v1/sub-installers (manual "New Sub Account"): the login password is made by
    the platform and emailed to `email`, never shown."""

    username = _username(metadata={"description": "the manual's Account: the login name"})
    email = _required_email()
    phone = phone_field()


class SubInstallerEdit(Schema):
    """PATCH /api/v1/sub-installers/{id}: the Account (login name) stays."""

    email = Email(validate=[validate.Length(max=EMAIL_MAX), _email_address])
    phone = phone_field()


class Assignment(Schema):
    """One community a property manager works on, with what it may do there."""

    community_id = fields.UUID(required=True)
    app = Boolean(load_default=True, metadata={
        "description": "SmartPlus app on for this property manager"})
    delete_account = Boolean(load_default=False, metadata={
        "description": "Delete Account Permission: it may reset an APT (remove its resident's "
                       "account)"})
    log_access_control = Boolean(load_default=False, metadata={
        "description": "Log Access Control: it may read the door and call logs"})


def _unique_communities(assignments: list[dict[str, object]]) -> None:
    ids = [a["community_id"] for a in assignments]
    if len(set(ids)) != len(ids):
        raise ValidationError("A community is named twice.")


class PropertyManagerCreate(Schema):
    """POST /api/v1/property-managers (manual "Property Manager Account"): the login is the
    email; the password is made by the platform and emailed, never shown."""

    first_name = Text(required=True, validate=validate.Length(min=1, max=NAME_MAX))
    last_name = Text(required=True, validate=validate.Length(min=1, max=NAME_MAX))
    email = _required_email()
    language = Text(load_default="en", validate=validate.Regexp(
        LANGUAGE_REGEX, error="Not a language tag such as 'en'."))
    password_reminder = Boolean(load_default=False, metadata={
        "description": "a monthly email reminding it to change its password"})
    two_factor = Boolean(load_default=False, metadata={
        "description": "email two-factor login"})
    communities = fields.List(fields.Nested(Assignment), required=True, validate=[
        validate.Length(min=1, max=PM_COMMUNITIES_MAX), _unique_communities])

    state_rules = {"communities": "communities of the calling installer's"}


class PropertyManagerEdit(Schema):
    """PATCH /api/v1/property-managers/{id}: the email (its login) stays; `communities`, when
    given, replaces the assignments."""

    first_name = Text(validate=validate.Length(min=1, max=NAME_MAX))
    last_name = Text(validate=validate.Length(min=1, max=NAME_MAX))
    language = Text(validate=validate.Regexp(LANGUAGE_REGEX,
                                             error="Not a language tag such as 'en'."))
    password_reminder = Boolean()
    two_factor = Boolean()
    communities = fields.List(fields.Nested(Assignment), validate=[
        validate.Length(min=1, max=PM_COMMUNITIES_MAX), _unique_communities])

    state_rules = {"communities": "communities of the calling installer's"}


class FamilyMemberCreate(Schema):
    """POST /api/v1/apartments/{id}/family-members (manual "Add/Edit/Delete Family Members"):
    an app account in the resident's family, with a SIP number of its own."""

    first_name = Text(required=True, validate=validate.Length(min=1, max=NAME_MAX))
    last_name = Text(required=True, validate=validate.Length(min=1, max=NAME_MAX))
    email = _required_email()
    mobile = phone_field()


class FamilyMemberEdit(Schema):
    """PATCH /api/v1/family-members/{id}: the email cannot be edited (manual)."""

    first_name = Text(validate=validate.Length(min=1, max=NAME_MAX))
    last_name = Text(validate=validate.Length(min=1, max=NAME_MAX))
    mobile = phone_field()


EMAIL_FIXED = "A family member's email cannot be edited."


class PasswordChange(Schema):
    """POST /api/v1/account/password: the current password proves it is the owner; every
    other session of the account ends."""

    current_password = Text(required=True, validate=validate.Length(min=1, max=PASSWORD_MAX))
    new_password = _password()

    state_rules = {"current_password": "the caller's password as it is now",
                   "new_password": "another than the current one"}


class PasswordForgotten(Schema):
    """POST /api/v1/auth/forgot-password: always accepted alike; a link goes to the account's
    email if there is such an account with one."""

    username = Text(required=True, validate=validate.Length(min=1, max=USERNAME_MAX))


class PasswordReset(Schema):
    """POST /api/v1/auth/reset-password: the emailed link's token, used once."""

    token = Text(required=True, validate=validate.Length(min=1, max=RESET_TOKEN_MAX))
    new_password = _password()

    state_rules = {"token": "the account's current link, unused and not expired"}


class DistributorCreate(Schema):
    """The bootstrap distributor's login, from the settings (`CONCIERGE_DISTRIBUTOR_*`)."""

    username = _username()
    password = _password()


class Principal(Schema):
    """Who a bearer token belongs to, as the gateway scopes every query by it."""

    account_id = fields.UUID(required=True)
    role = fields.String(required=True, validate=validate.OneOf(PORTAL_ROLES))
    username = fields.String(required=True)
    # The installer whose sites the caller works on; None for a distributor.
    installer_id = fields.UUID(required=True, allow_none=True)


# --- event data ----------------------------------------------------------------------------


class _EventData(Schema):
    class Meta:
        unknown = EXCLUDE


class PortalAccountCreatedSchema(_EventData):
    role = fields.String(required=True, validate=validate.OneOf(PORTAL_ROLES))
    username = fields.String(required=True)
    email = fields.String(required=True, allow_none=True)
    # The distributor that created an installer, the installer that created a sub-installer;
    # None for the bootstrap distributor.
    created_by = fields.UUID(required=True, allow_none=True)
    phone = fields.String(load_default=None, allow_none=True)  # added with sub-installers


class PasswordIssuedSchema(_EventData):
    """The platform made the account a password (`issue` counts them) and notify emails it;
    the password itself is never in an event: notify asks accounts for it when it sends, and
    accounts answers only for the current issue (services/accounts)."""

    issue = fields.Integer(required=True, validate=validate.Range(min=1))
    reason = fields.String(required=True, validate=validate.OneOf(PASSWORD_ISSUE_REASONS))
    role = fields.String(load_default=None, allow_none=True)
    username = fields.String(load_default=None, allow_none=True)
    email = fields.String(load_default=None, allow_none=True)


class PasswordResetRequestedSchema(_EventData):
    """Someone asked for a forgotten password's link (`request` counts them); notify emails
    it, asking accounts for the link's token as it sends."""

    request = fields.Integer(required=True, validate=validate.Range(min=1))
    expires_at = fields.AwareDateTime(required=True)
    username = fields.String(required=True)
    email = fields.String(required=True)


class LoginChallengedSchema(_EventData):
    """A right password of an account with two-factor login: a code goes to its email (notify
    asks accounts for it as it sends); `challenge` counts them."""

    challenge = fields.Integer(required=True, validate=validate.Range(min=1))
    expires_at = fields.AwareDateTime(required=True)
    username = fields.String(required=True)
    email = fields.String(required=True)


class LoginCodeFailedSchema(_EventData):
    challenge = fields.Integer(required=True)
    tries = fields.Integer(required=True)


class LoginChallengePassedSchema(_EventData):
    challenge = fields.Integer(required=True)


class InstallerSettingsSetSchema(_EventData):
    """The installer's settings as they now are (manual "Setting"); only the fact that the
    distributor may or may not access the account is published."""

    allow_distributor_access = fields.Boolean(required=True)


class TwoFactorSetSchema(_EventData):
    on = fields.Boolean(required=True)


class PasswordResetCompletedSchema(_EventData):
    """The link was used: the password is new and every session ended."""

    request = fields.Integer(required=True, validate=validate.Range(min=1))


class PropertyManagerSetSchema(_EventData):
    """A property manager as its installer set it (on creation and on each edit): names,
    settings and every community it works on, with its permissions there."""

    first_name = fields.String(required=True)
    last_name = fields.String(required=True)
    language = fields.String(required=True)
    password_reminder = fields.Boolean(required=True)
    two_factor = fields.Boolean(required=True)
    installer_id = fields.UUID(required=True)
    communities = fields.List(fields.Dict(), required=True)


class PortalAccountEditedSchema(_EventData):
    """The account's contact as it now is."""

    email = fields.String(required=True, allow_none=True)
    phone = fields.String(required=True, allow_none=True)


class PortalAccountDeletedSchema(_EventData):
    """The login is gone; its sessions ended with it (SessionsEnded before this)."""


class SessionsEndedSchema(_EventData):
    """Every session of the account (or every other one) ended at once; which tokens stays
    private."""

    reason = fields.String(required=True, validate=validate.OneOf(SESSIONS_ENDED_REASONS))
    count = fields.Integer(required=True, validate=validate.Range(min=0))


class SessionOpenedSchema(_EventData):
    expires_at = fields.AwareDateTime(required=True)


class SessionClosedSchema(_EventData):
    """The stream id says whose session; which token stays private."""


class PasswordChangedSchema(_EventData):
    """Only the fact is public; the hash stays in the store."""


class MasterAccountCreatedSchema(_EventData):
    """Its names and email read as None once the tenancy ended (a reset or a delete destroyed
    the tenant's key): a replay never brings them back."""

    apartment_id = fields.UUID(required=True)
    community_id = fields.UUID(required=True)
    installer_id = fields.UUID(required=True)
    first_name = fields.String(required=True, allow_none=True)
    last_name = fields.String(required=True, allow_none=True)
    email = fields.String(required=True, allow_none=True)


class MasterAccountContactChangedSchema(_EventData):
    """The installer edited the resident. The fields after `email` were added later (events
    recorded before them carry None): with them notify decides on an activation email."""

    first_name = fields.String(required=True, allow_none=True)
    last_name = fields.String(required=True, allow_none=True)
    email = fields.String(required=True, allow_none=True)
    previous_email = fields.String(load_default=None, allow_none=True)
    apartment_id = fields.UUID(load_default=None, allow_none=True)
    installer_id = fields.UUID(load_default=None, allow_none=True)
    # The app status when the contact changed; a contact change never changes it.
    app_status = fields.String(load_default=None, allow_none=True,
                               validate=validate.OneOf(APP_STATUSES))
    # How many times the account was reset before: each reset starts the app's set-up again.
    resets = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0))


class MasterAccountRegisteredSchema(_EventData):
    """The resident initialised the app: app status becomes `registered`."""


class FamilyMemberAddedSchema(_EventData):
    """A family member account joined the master account; the fields after the id came
    later (older events: None), `free` says whether it took one of the free accounts."""

    family_member_id = fields.String(required=True, validate=validate.Length(min=1))
    sip = fields.String(load_default=None, allow_none=True)
    free = fields.Boolean(load_default=None, allow_none=True)
    resets = fields.Integer(load_default=None, allow_none=True)


class FamilyMemberEditedSchema(_EventData):
    family_member_id = fields.String(required=True)
    resets = fields.Integer(load_default=None, allow_none=True)


class FamilyMemberRemovedSchema(_EventData):
    """Deleted: its account stops working; the free account it took stays used."""

    family_member_id = fields.String(required=True)


class FamilySipClaimedSchema(_EventData):
    sip = fields.String(required=True)
    master_account_id = fields.UUID(required=True)


class MasterAccountResetSchema(_EventData):
    """App status back to `unregistered`, credentials and contact data cleared."""

    removed_family_member_ids = fields.List(fields.String(), required=True)
    # The next tenancy and the names it keeps (manual); added later: older resets carry None.
    resets = fields.Integer(load_default=None, allow_none=True)
    first_name = fields.String(load_default=None, allow_none=True)
    last_name = fields.String(load_default=None, allow_none=True)


class MasterAccountClosedSchema(_EventData):
    """The APT was deleted: the app account and its family member accounts no longer work.

    A closed account records nothing more; its master account id is never reused.
    """

    apartment_id = fields.UUID(required=True)
    removed_family_member_ids = fields.List(fields.String(), required=True)
    resets = fields.Integer(load_default=None, allow_none=True)  # added later


EVENT_SCHEMAS: dict[str, type[Schema]] = {
    "PortalAccountCreated": PortalAccountCreatedSchema,
    "SessionOpened": SessionOpenedSchema,
    "SessionClosed": SessionClosedSchema,
    "PasswordChanged": PasswordChangedSchema,
    "PasswordIssued": PasswordIssuedSchema,
    "PasswordResetRequested": PasswordResetRequestedSchema,
    "LoginChallenged": LoginChallengedSchema,
    "LoginCodeFailed": LoginCodeFailedSchema,
    "LoginChallengePassed": LoginChallengePassedSchema,
    "TwoFactorSet": TwoFactorSetSchema,
    "InstallerSettingsSet": InstallerSettingsSetSchema,
    "PasswordResetCompleted": PasswordResetCompletedSchema,
    "PortalAccountEdited": PortalAccountEditedSchema,
    "PropertyManagerSet": PropertyManagerSetSchema,
    "PortalAccountDeleted": PortalAccountDeletedSchema,
    "SessionsEnded": SessionsEndedSchema,
    "MasterAccountCreated": MasterAccountCreatedSchema,
    "MasterAccountContactChanged": MasterAccountContactChangedSchema,
    "MasterAccountRegistered": MasterAccountRegisteredSchema,
    "FamilyMemberAdded": FamilyMemberAddedSchema,
    "FamilyMemberEdited": FamilyMemberEditedSchema,
    "FamilyMemberRemoved": FamilyMemberRemovedSchema,
    "FamilySipClaimed": FamilySipClaimedSchema,
    "MasterAccountReset": MasterAccountResetSchema,
    "MasterAccountClosed": MasterAccountClosedSchema,
}
