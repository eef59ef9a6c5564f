# Helpers shared by every component's CMakeLists.txt.

# Warnings are errors in our own code (STYLE.md rule 9).
function(ff_set_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror -Wno-missing-field-initializers>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall --Werror=all-warnings>)
endfunction()

# ff_add_library(name SOURCES ... [DEPS ...]): a static library ff_<name> with alias ff::<name>,
# public headers under include/.
function(ff_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(ff_${name} STATIC ${ARG_SOURCES})
  add_library(ff::${name} ALIAS ff_${name})
  target_include_directories(ff_${name} PUBLIC ${PROJECT_SOURCE_DIR}/include)
  target_link_libraries(ff_${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  ff_set_warnings(ff_${name})
endfunction()

# ff_add_gtest(name SOURCES ... DEPS ...): a GoogleTest binary whose tests ctest discovers.
function(ff_add_gtest name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  ff_set_warnings(${name})
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
endfunction()

# ff_add_tool(name SOURCES ... DEPS ...): a command-line program put in build/bin.
function(ff_add_tool name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} CLI11::CLI11)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
  ff_set_warnings(${name})
endfunction()
