"""Users, passwords, API tokens and sign-in limits: the one code path for the pages, the CLI and the tests."""
from __future__ import annotations

import hashlib
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from flask_login import UserMixin
from sqlalchemy import delete, func, or_, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from app.change_feed import TOKENS, USERS, FeedCache
from app.errors import AppError, ConflictError, NotFoundError, ValidationError
from app.extensions import db
from app.models import ADMIN, MEMBER, ApiToken, SignInFailure, User

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOKEN_PREFIX = "trt_"
LABEL_MAX = 80
PASSWORD_MIN = 10
TOKEN_TOUCH_SECONDS = 60  # last_used_at is written at most this often per token


class TooManyAttempts(AppError):
    """Sign-in is paused for this username or address after too many failures."""

    status = 429


@dataclass(frozen=True)
class Actor:
    """Who asks, as the services see it."""

    user_id: int
    username: str
    is_admin: bool

    @classmethod
    def of(cls, user: User) -> "Actor":
        return cls(user.id, user.username, user.is_admin)

    def may_change(self, owner_id: int | None) -> bool:
        """Admins act on anything; members on what they created."""
        return self.is_admin or (owner_id is not None and owner_id == self.user_id)


def _check_username(username: str) -> str:
    username = (username or "").strip()
    if not USERNAME_PATTERN.match(username):
        raise ValidationError("invalid username", {"username": "use 1-64 letters, digits, '.', '_' or '-', "
                                                               "starting with a letter or digit"})
    return username


def generate_password() -> str:
    """A random password a person can type: 20 URL-safe characters."""
    return secrets.token_urlsafe(15)


def create_user(username: str, *, admin: bool = False, password: str | None = None) -> tuple[User, str]:
    """A new user and the password it got (generated unless given); ConflictError when the name is taken."""
    username = _check_username(username)
    password = password if password is not None else generate_password()
    _check_password(password)
    if find_user(username) is not None:
        raise ConflictError(f"user {username!r} already exists", {"username": "is taken"})
    user = User(username=username, password_hash=generate_password_hash(password), role=ADMIN if admin else MEMBER)
    db.session.add(user)
    db.session.commit()
    return user, password


def _check_password(password: str) -> None:
    if len(password) < PASSWORD_MIN:
        raise ValidationError("invalid password", {"password": f"must be at least {PASSWORD_MIN} characters"})


def set_password(username: str, password: str) -> None:
    """Replace a user's password; NotFoundError for an unknown user."""
    user = find_user(username)
    if user is None:
        raise NotFoundError(f"no user {username!r}")
    _check_password(password)
    user.password_hash = generate_password_hash(password)
    user.session_generation += 1  # a new password ends every session the old one opened
    db.session.commit()


def find_user(username: str) -> User | None:
    return db.session.scalar(select(User).where(User.username == username))


@dataclass(frozen=True, eq=False)
class SignedInUser(UserMixin):
    """Who a page session belongs to: a copy of the user row, so a process can keep it between requests."""

    id: int
    username: str
    role: str
    session_generation: int = 0
    active: bool = True

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def get_id(self) -> str:
        return f"{self.id}:{self.session_generation}"


# Every page request signs in from its session cookie. The copy is kept until the user's row changes
# or is deleted (a trigger notifies; app.change_feed), so a poll does not read the user every time.
_signed_in = FeedCache(USERS, size=4096)


def signed_in_user(user_id: int) -> SignedInUser | None:
    """The user a session names, or None when it no longer exists."""
    def load() -> SignedInUser | None:
        row = db.session.execute(select(User.id, User.username, User.role, User.session_generation, User.active)
                                 .where(User.id == user_id)).first()
        return None if row is None else SignedInUser(row.id, row.username, row.role, row.session_generation,
                                                     row.active)

    found = _signed_in.get(str(user_id), load)
    return found if found is not None and found.active else None


def session_user(session_id: str) -> SignedInUser | None:
    """The user a page session names ("<user id>:<generation>"), while that generation is current and
    the user active; None once it ended (signed out, new password, deactivated, signed out everywhere)."""
    user_id, _, generation = session_id.partition(":")
    if not (user_id.isdigit() and generation.isdigit()):
        return None  # a session from before generations: sign in again
    user = signed_in_user(int(user_id))
    return user if user is not None and user.session_generation == int(generation) else None


def end_sessions(user_id: int) -> None:
    """End every page session of the user, wherever it is (its next request finds itself signed out)."""
    db.session.execute(update(User).where(User.id == user_id)
                       .values(session_generation=User.session_generation + 1))
    db.session.commit()


def set_active(username: str, active: bool) -> None:
    """Deactivate a user (sessions ended, tokens refused, sign-in refused) or make them active again."""
    user = find_user(username)
    if user is None:
        raise NotFoundError(f"no user {username!r}")
    user.active = active
    user.session_generation += 1
    db.session.commit()


def has_users() -> bool:
    return db.session.scalar(select(func.count()).select_from(User)) > 0


def ensure_first_admin() -> str | None:
    """On a fresh database, create `admin` with a random password and return it; None when users exist."""
    db.session.execute(select(func.pg_advisory_xact_lock(func.hashtext("tunix_rt_first_admin"))))
    if has_users():
        db.session.rollback()
        return None
    _, password = create_user("admin", admin=True)
    return password


ADDRESS_FAILURES_FACTOR = 3  # an address may fail this many times max_failures, over every name, before a pause
BACKOFF_MAX_SECONDS = 60.0


def authenticate(username: str, password: str, address: str, *, max_failures: int, window_seconds: float) -> User:
    """The user these credentials name; ValidationError when they are wrong, TooManyAttempts (429, with
    the seconds to wait) while sign-in is paused for them.

    Failures are counted in the database (every process sees them), so that no stranger can lock an
    owner out of their account and no address can guess freely:
    - one name from one address: paused after `max_failures` in the window;
    - one address, over every name: paused after ADDRESS_FAILURES_FACTOR times that;
    - one name from every address: past `max_failures`, each further try waits 1, 2, 4 ... up to 60 s
      after the name's last failure; but not from an address with no failure in the window, so the
      owner, signing in from their own address, gets in while strangers fail for their name."""
    username = (username or "").strip()[:64]
    address = (address or "unknown")[:64]
    now = datetime.now(timezone.utc)
    pause = _sign_in_pause(username, address, now, max_failures, window_seconds)
    if pause is not None:
        raise TooManyAttempts("too many failed sign-ins: sign-in is paused", {
            "username": f"sign-in is paused after repeated failures: try again in {math.ceil(pause)} s"})
    user = find_user(username) if USERNAME_PATTERN.match(username or "") else None
    # Check a hash even for an unknown name, so timing does not tell which names exist.
    valid = check_password_hash(user.password_hash if user else _DUMMY_HASH, password or "")
    if user is None or not valid or not user.active:
        db.session.add(SignInFailure(username=username, address=address))
        db.session.commit()
        raise ValidationError("wrong username or password", {"password": "wrong username or password"})
    db.session.execute(delete(SignInFailure).where(SignInFailure.username == username,
                                                   SignInFailure.address == address))
    db.session.commit()
    return user


def _sign_in_pause(username: str, address: str, now: datetime, max_failures: int,
                   window_seconds: float) -> float | None:
    """Seconds this name from this address must wait before trying again; None when it may try now."""
    since = now - timedelta(seconds=window_seconds)
    pair, mine = SignInFailure.username == username, SignInFailure.address == address
    row = db.session.execute(select(
        func.count().filter(pair & mine), func.min(SignInFailure.failed_at).filter(pair & mine),
        func.count().filter(mine), func.min(SignInFailure.failed_at).filter(mine),
        func.count().filter(pair), func.max(SignInFailure.failed_at).filter(pair),
    ).where(SignInFailure.failed_at >= since, or_(pair, mine))).one()
    pair_count, pair_oldest, address_count, address_oldest, name_count, name_latest = row
    waits = []
    if pair_count >= max_failures:
        waits.append((pair_oldest - since).total_seconds())
    if address_count >= ADDRESS_FAILURES_FACTOR * max_failures:
        waits.append((address_oldest - since).total_seconds())
    if name_count >= max_failures and address_count > 0:
        backoff = min(BACKOFF_MAX_SECONDS, 2.0 ** (name_count - max_failures))
        waits.append(backoff - (now - name_latest).total_seconds())
    wait = max(waits, default=0.0)
    return wait if wait > 0 else None


_DUMMY_HASH = generate_password_hash("not a password of anyone")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(user: User | SignedInUser, label: str = "") -> tuple[ApiToken, str]:
    """A new API token for the user and its secret, which is shown once and stored only as a hash."""
    label = (label or "").strip() or "token"
    if len(label) > LABEL_MAX or any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise ValidationError("invalid token label", {"label": f"one line of at most {LABEL_MAX} characters"})
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user.id, label=label, token_hash=_digest(secret))
    db.session.add(token)
    db.session.commit()
    return token, secret


# A script polling the API sends its token on every call; what it names is kept until the token row
# changes or goes (a trigger notifies: revoked, its use noted, its user deleted).
_tokens = FeedCache(TOKENS, size=4096)


def user_for_token(secret: str) -> SignedInUser | None:
    """The user a bearer token belongs to, or None; notes its use at most once a minute."""
    if not secret or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    digest = _digest(secret)
    found = _tokens.get(digest, lambda: db.session.execute(
        select(ApiToken.id, ApiToken.user_id, ApiToken.last_used_at).where(ApiToken.token_hash == digest)).first())
    if found is None:
        return None
    now = datetime.now(timezone.utc)
    if found.last_used_at is None or (now - found.last_used_at).total_seconds() >= TOKEN_TOUCH_SECONDS:
        db.session.execute(update(ApiToken).where(ApiToken.id == found.id).values(last_used_at=now))
        db.session.commit()
    return signed_in_user(found.user_id)


def list_tokens(user_id: int) -> list[ApiToken]:
    return list(db.session.scalars(select(ApiToken).where(ApiToken.user_id == user_id)
                                   .order_by(ApiToken.created_at.desc())))


def revoke_token(user_id: int, token_id: int) -> bool:
    """Delete one of the user's own tokens; False when it had none with that id."""
    done = db.session.execute(delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user_id))
    db.session.commit()
    return done.rowcount > 0
