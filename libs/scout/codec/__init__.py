"""KV codecs: one frozen dataclass per codec (`raw`, `uniform`, `mixed`, `delta`, `entropy`), one registry and
spec parser (`registry.get_codec`), the quantizer they share (`quant`), the checked blob format (`wire`), and the
calibration that makes mixed plans (`calibrate`, `trials`). Import the module you need; nothing registers here."""
