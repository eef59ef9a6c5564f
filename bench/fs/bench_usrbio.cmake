# fs_usrbio_bench (bench/fs/bench_usrbio.cc, driven by bench_usrbio.py): usrbio rings vs FileClient and
# FUSE read(2). Needs the file client and the ff-meta client (the bench shares ff-fuse's metadata).
if(TARGET ff::fs_usrbio AND TARGET ff::fs_client AND TARGET ff::fs_meta_rpc)
  add_executable(fs_usrbio_bench ${CMAKE_CURRENT_LIST_DIR}/bench_usrbio.cc)
  target_link_libraries(fs_usrbio_bench PRIVATE ff::fs_usrbio ff::fs_client ff::fs_meta_rpc CLI11::CLI11
                                                 nlohmann_json::nlohmann_json)
  # Run by bench_usrbio.py with a cluster's addresses, not by scripts/bench.sh directly: bench-tools/.
  set_target_properties(fs_usrbio_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench-tools)
  ff_set_warnings(fs_usrbio_bench)
endif()
