"""`python tests/gcs_emulator.py PORT BUCKET`: gcp-storage-emulator (the GCS JSON API) in memory on 127.0.0.1.

Three changes to the stock server, each towards what Cloud Storage does:

* a download answers with the object's generation in ``x-goog-generation`` (and
  ``x-goog-metageneration``), as GCS does; TensorStore's GCS driver takes the
  generation of what it read from that header, and without it the next
  conditional write of an OCDBT manifest (Orbax's checkpoints) fails now and
  then with "Malformed StorageGeneration";
* a listen backlog for TensorStore's many parallel connections (the default of
  5 refuses some);
* no traceback for a client that hung up (gcsfs cancels the slower of two
  requests it races).
"""

import logging
import sys
from http import server as http_server

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


class _Server(http_server.HTTPServer):
    request_queue_size = 128

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def _with_generation(handler):
    """`handler` (an object read) answering with the object's generation headers too."""

    def read(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except NotFound:
            obj = None
        if obj is not None:
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]
        return handler(request, response, storage, *args, **kwargs)

    return read


def main() -> None:
    port, bucket = int(sys.argv[1]), sys.argv[2]
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # every 404 is logged as an error
    emulator.server.HTTPServer = _Server
    reads = (objects.get, objects.download)  # `get` serves ?alt=media downloads too
    emulator.HANDLERS = tuple((regex, {m: _with_generation(h) if h in reads else h for m, h in methods.items()})
                              for regex, methods in emulator.HANDLERS)
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()  # runs until the test session closes our stdin (or dies)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
