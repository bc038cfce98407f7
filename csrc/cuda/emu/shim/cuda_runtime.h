// emulator shim: nothing from the CUDA runtime is needed by the kernels' device code
#pragma once
