/// The task types every lopt command knows (see tasks/task.h for how to add one).
#include "tasks/mlp.h"
#include "tasks/transformer.h"

namespace lopt {

void register_builtin_tasks() {
  register_task_type("mlp", {[](const nlohmann::json& config, const std::string& path) {
                               auto c = MlpConfig::from_json(config, path);
                               c.parametrization = make_parametrization(c.parametrization, path + "/parametrization")->hyperparams();
                               return c.to_json();
                             },
                             [](const nlohmann::json& resolved) -> std::unique_ptr<Task> {
                               return std::make_unique<MlpTask>(MlpConfig::from_json(resolved));
                             }});
  register_task_type("transformer_lm", {[](const nlohmann::json& config, const std::string& path) {
                                          return TransformerConfig::from_json(config, path).to_json();
                                        },
                                        [](const nlohmann::json& resolved) -> std::unique_ptr<Task> {
                                          return std::make_unique<TransformerLmTask>(TransformerConfig::from_json(resolved));
                                        }});
  register_task_family_type("mlp_family", [](const nlohmann::json& config, const std::string& path) -> std::unique_ptr<TaskFamily> {
    return std::make_unique<MlpFamily>(config, path);
  });
  register_task_family_type("transformer_lm_family",
                            [](const nlohmann::json& config, const std::string& path) -> std::unique_ptr<TaskFamily> {
                              return std::make_unique<TransformerFamily>(config, path);
                            });
}

}  // namespace lopt
