# shoal_cuda_sources(): the CUDA backend's sources, as they are for nvcc or rewritten for
# the SIMT emulator (tests/simt, -DSHOAL_SIMT_EMULATION=ON; the emulator's own targets are
# in ShoalSimtTargets.cmake).
set(SHOAL_SIMT_DIR ${PROJECT_SOURCE_DIR}/tests/simt)
# The rewritten sources' arithmetic: the host's, one rounding per operation (the kernels
# match the CPU references closely), or with SHOAL_SIMT_GPU_ARITHMETIC a GPU's deviations
# from it (nvcc contracts a * b + c into one fused multiply-add by default; simt.h's
# approximate intrinsics), so a test whose margin only the host's arithmetic meets fails
# here rather than in a short GPU run.
if(SHOAL_SIMT_GPU_ARITHMETIC)
  set(SHOAL_SIMT_ARITHMETIC_OPTIONS "-ffp-contract=fast;-mfma;-DSHOAL_SIMT_GPU_ARITHMETIC=1")
else()
  set(SHOAL_SIMT_ARITHMETIC_OPTIONS "-ffp-contract=off")
endif()

# shoal_cuda_sources(<var> <files>...): the files as they are, except that under the
# emulator every .cu file becomes its rewritten host C++ twin, built with UBSan's alignment
# check (a misaligned 16-byte vector load faults on a GPU; x86 would let it pass).
function(shoal_cuda_sources out)
  set(result)
  foreach(src ${ARGN})
    if(SHOAL_SIMT_EMULATION AND src MATCHES "\\.cu$")
      get_filename_component(name ${src} NAME_WE)
      set(gen ${CMAKE_CURRENT_BINARY_DIR}/simt/${name}.simt.cc)
      add_custom_command(OUTPUT ${gen}
        COMMAND ${Python3_EXECUTABLE} ${SHOAL_SIMT_DIR}/rewrite_launches.py ${CMAKE_CURRENT_SOURCE_DIR}/${src} ${gen}
        DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${src} ${SHOAL_SIMT_DIR}/rewrite_launches.py
        COMMENT "simt: rewriting ${src}")
      set_source_files_properties(${gen} PROPERTIES COMPILE_OPTIONS "-include;${SHOAL_SIMT_DIR}/simt.h;${SHOAL_SIMT_ARITHMETIC_OPTIONS};-Wno-unknown-pragmas;-fsanitize=alignment;-fno-sanitize-recover=alignment"
                                  OBJECT_DEPENDS ${SHOAL_SIMT_DIR}/simt.h)
      list(APPEND result ${gen})
    else()
      list(APPEND result ${src})
    endif()
  endforeach()
  set(${out} ${result} PARENT_SCOPE)
endfunction()
