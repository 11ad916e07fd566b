"""Extensions created without an app and bound in the factory."""
import time

from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect

db = SQLAlchemy()
migrate = Migrate()
csrf = CSRFProtect()
login_manager = LoginManager()


def ping_idle_connections(engine, idle_seconds: float) -> None:
    """Before a pooled connection that sat idle for `idle_seconds` is handed out, check it with a round trip.

    A connection in steady use is handed out unchecked, so a busy request costs no extra round trip
    (pool_pre_ping would add one to every request). One left idle may have been cut off (a server
    restart, an idle timeout): the pool then replaces it. A restart under load is caught instead by
    SQLAlchemy's disconnect handling, which retires every pooled connection after the first error.
    """
    from sqlalchemy import event, exc

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, proxy) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < idle_seconds:
            return
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            dbapi_connection.rollback()
        except Exception as error:  # any failure here means: not this connection
            raise exc.DisconnectionError(f"idle connection failed its check: {error}") from error
