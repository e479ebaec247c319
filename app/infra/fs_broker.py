"""The embedded service's broker: kombu's filesystem transport with messages that appear whole.

kombu writes a message straight into the queue folder under its final name, so a worker polling
that folder can take the file while it is still empty or half written: the worker then failed to
parse it ("Unrecoverable error: JSONDecodeError"), restarted, and the job waited for the recovery
loop's resend (`MTL_QUEUED_RESEND_AFTER_S`, 10 minutes). Here a message is written under a name
the consumer ignores and renamed into place (atomic on one filesystem). Selected in
`app.infra.broker.make_celery` for `filesystem://` broker URLs.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):  # type: ignore[misc]
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # kombu's own name, so that its consumer orders and matches messages as before.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        # A leading dot: `Channel._get` takes only names whose part after the first dot is
        # "<queue>.msg", which "._tmp..." never is.
        partial = os.path.join(self.data_folder_out, f"._tmp_{name}")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {name!r} to directory") from exc
        finally:
            if os.path.exists(partial):
                os.unlink(partial)


class Transport(filesystem.Transport):  # type: ignore[misc]
    Channel = Channel

    @property
    def default_connection_params(self) -> dict[str, Any]:
        # A folder has no host: kombu's default ('localhost') only made it log "No hostname was
        # supplied" on every connection, i.e. on every job.
        return {}
