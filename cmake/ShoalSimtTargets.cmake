# The SIMT emulator build (tests/simt): -DSHOAL_SIMT_EMULATION=ON -DCUDAToolkit_ROOT=<toolkit>
# builds the CUDA backend and its cuda tests without nvcc: each .cu source is rewritten
# (tests/simt/rewrite_launches.py) and compiled as host C++ with tests/simt/simt.h, and
# CUDA::cudart / libcublas.so.13 are the emulator's CPU implementations. Only the
# toolkit's headers are used.

set(SHOAL_SIMT_LIB_DIR ${CMAKE_BINARY_DIR}/simt-lib)
find_package(Python3 REQUIRED COMPONENTS Interpreter)
if(NOT EXISTS ${CUDAToolkit_ROOT}/include/cuda_runtime_api.h)
  message(FATAL_ERROR "SHOAL_SIMT_EMULATION needs CUDAToolkit_ROOT with the CUDA headers (scripts/setup_cuda.sh)")
endif()
set(CUDAToolkit_INCLUDE_DIRS ${CUDAToolkit_ROOT}/include)

add_library(shoal_simt_cudart SHARED ${SHOAL_SIMT_DIR}/simt_runtime.cc)
target_include_directories(shoal_simt_cudart PUBLIC ${CUDAToolkit_INCLUDE_DIRS})
set_target_properties(shoal_simt_cudart PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${SHOAL_SIMT_LIB_DIR})

# The emulated runtime loads this one from its own directory when it starts, so the
# engine's dlopen("libcublas.so.13") finds it loaded.
add_library(shoal_simt_cublas SHARED ${SHOAL_SIMT_DIR}/simt_cublas.cc)
target_link_libraries(shoal_simt_cublas PRIVATE shoal_simt_cudart)
if(SHOAL_SIMT_GPU_ARITHMETIC)
  target_compile_definitions(shoal_simt_cublas PRIVATE SHOAL_SIMT_GPU_ARITHMETIC=1)
endif()
set_target_properties(shoal_simt_cublas PROPERTIES OUTPUT_NAME cublas VERSION 13 SOVERSION 13
                      LIBRARY_OUTPUT_DIRECTORY ${SHOAL_SIMT_LIB_DIR})
# What links CUDA::cudart gets the runtime, and its build waits for the cuBLAS it dlopens.
add_library(shoal_simt_cuda INTERFACE)
target_link_libraries(shoal_simt_cuda INTERFACE shoal_simt_cudart)
target_link_options(shoal_simt_cuda INTERFACE -fsanitize=alignment)  # the rewritten sources' UBSan runtime
add_dependencies(shoal_simt_cuda shoal_simt_cublas)
add_library(CUDA::cudart ALIAS shoal_simt_cuda)

