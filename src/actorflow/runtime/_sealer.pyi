class RunSealer:
    def __init__(self, key: bytes, json_prefix: bytes, aad_prefix: bytes) -> None: ...
    def seal(
        self,
        nonce: bytes,
        plaintext: bytes | bytearray | memoryview,
        type_part: bytes,
        correlation_id: str | None,
        /,
    ) -> bytes: ...
