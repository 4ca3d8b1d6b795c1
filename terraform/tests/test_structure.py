"""Structural checks of the Terraform code that needs the Linode provider.

The pop module and the fleet example cannot be initialised without downloading the
provider, so these tests read their HCL and check what review would otherwise have to:
typed and described inputs, pinned versions, tags on everything that takes them, the
firewall's shape, and that every input reaches the validated, provider-free modules.

Run: python terraform/tests/test_structure.py (from anywhere).
"""

import pathlib
import re
import unittest

import hcl2

TERRAFORM_DIR = pathlib.Path(__file__).resolve().parent.parent
PROVIDER_FREE_MODULES = ["modules/pop_settings", "modules/fleet_plan", "modules/inventory"]
LINODE_ROOTS = ["modules/pop", "examples/fleet"]
# Linode resource types whose API objects carry tags.
TAGGABLE_LINODE_TYPES = {
    "linode_instance",
    "linode_firewall",
    "linode_domain",
    "linode_volume",
    "linode_nodebalancer",
    "linode_lke_cluster",
}
PINNED_VERSION = re.compile(r"^(~> \d+\.\d+(\.\d+)?|=?\s*\d+\.\d+\.\d+)$")


def load_dir(relative_dir):
    """Merges the top-level blocks of every .tf file of one module."""
    merged = {}
    for path in sorted((TERRAFORM_DIR / relative_dir).glob("*.tf")):
        with path.open() as handle:
            for block_type, blocks in hcl2.load(handle).items():
                merged.setdefault(block_type, []).extend(blocks)
    return merged


def named_blocks(module, block_type):
    """{name: body} for blocks with one label (variable, output, module)."""
    found = {}
    for block in module.get(block_type, []):
        for name, body in block.items():
            found[name] = body
    return found


def resources(module):
    """[(type, name, body)] of every resource block."""
    found = []
    for block in module.get("resource", []):
        for resource_type, by_name in block.items():
            for name, body in by_name.items():
                found.append((resource_type, name, body))
    return found


def attribute(body, key):
    """The single value of an attribute (the parser wraps each one in a list)."""
    value = body.get(key)
    return value[0] if isinstance(value, list) and value else value


def all_module_dirs():
    return PROVIDER_FREE_MODULES + LINODE_ROOTS


class InputsAndOutputs(unittest.TestCase):
    def test_every_variable_is_typed_and_described(self):
        for module_dir in all_module_dirs():
            for name, body in named_blocks(load_dir(module_dir), "variable").items():
                with self.subTest(module=module_dir, variable=name):
                    self.assertIn("type", body, "variable has no type")
                    self.assertTrue(str(attribute(body, "description") or "").strip(), "variable has no description")

    def test_every_output_is_described(self):
        for module_dir in all_module_dirs():
            for name, body in named_blocks(load_dir(module_dir), "output").items():
                with self.subTest(module=module_dir, output=name):
                    self.assertTrue(str(attribute(body, "description") or "").strip(), "output has no description")

    def test_pop_hands_every_setting_to_the_validating_module(self):
        # The validations live in pop_settings (tested there without a provider); a pop
        # input that bypassed it would reach Linode unchecked.
        pop = load_dir("modules/pop")
        settings_inputs = set(named_blocks(load_dir("modules/pop_settings"), "variable"))
        call = named_blocks(pop, "module")["settings"]
        self.assertEqual(attribute(call, "source"), "../pop_settings")
        for name in settings_inputs:
            with self.subTest(variable=name):
                self.assertIn(name, named_blocks(pop, "variable"))
                self.assertEqual(attribute(call, name), "${var.%s}" % name)


class Versions(unittest.TestCase):
    def terraform_block(self, module_dir):
        blocks = load_dir(module_dir).get("terraform", [])
        self.assertEqual(len(blocks), 1, f"{module_dir} must have exactly one terraform block")
        return blocks[0]

    def test_every_module_sets_required_version(self):
        for module_dir in all_module_dirs():
            with self.subTest(module=module_dir):
                self.assertRegex(attribute(self.terraform_block(module_dir), "required_version"), r">= 1\.\d+")

    def test_linode_provider_is_pinned(self):
        for module_dir in LINODE_ROOTS:
            with self.subTest(module=module_dir):
                providers = attribute(self.terraform_block(module_dir), "required_providers")
                linode = providers["linode"][0] if isinstance(providers["linode"], list) else providers["linode"]
                self.assertEqual(linode["source"], "linode/linode")
                self.assertRegex(linode["version"], PINNED_VERSION)

    def test_provider_free_modules_stay_provider_free(self):
        for module_dir in PROVIDER_FREE_MODULES:
            module = load_dir(module_dir)
            with self.subTest(module=module_dir):
                self.assertNotIn("required_providers", self.terraform_block(module_dir))
                for block_type in ("resource", "data", "provider"):
                    self.assertNotIn(block_type, module, f"{block_type} blocks need a provider")


class LinodeResources(unittest.TestCase):
    def setUp(self):
        self.pop = load_dir("modules/pop")
        self.by_type = {resource_type: body for resource_type, _, body in resources(self.pop)}

    def test_every_taggable_resource_is_tagged(self):
        for module_dir in LINODE_ROOTS:
            for resource_type, name, body in resources(load_dir(module_dir)):
                if resource_type in TAGGABLE_LINODE_TYPES:
                    with self.subTest(resource=f"{resource_type}.{name}"):
                        self.assertIn("tags", body)

    def test_instance_logs_in_by_key_only(self):
        instance = self.by_type["linode_instance"]
        self.assertEqual(attribute(instance, "authorized_keys"), "${module.settings.instance.authorized_keys}")
        self.assertNotIn("root_pass", instance, "a root password in the configuration would land in the state")
        self.assertEqual(attribute(instance, "tags"), "${module.settings.instance.tags}")

    def test_firewall_drops_what_no_rule_allows(self):
        firewall = self.by_type["linode_firewall"]
        self.assertEqual(attribute(firewall, "inbound_policy"), "DROP")
        self.assertEqual(attribute(firewall, "outbound_policy"), "ACCEPT")
        self.assertEqual(attribute(firewall, "linodes"), ["${linode_instance.pop.id}"])

    def test_firewall_rules_come_only_from_the_tested_rule_set(self):
        # The rules themselves (80/443 public, admin port mesh-only) are asserted by
        # modules/pop_settings/tests; here: no rule is added beside them.
        firewall = self.by_type["linode_firewall"]
        self.assertNotIn("inbound", firewall, "static inbound rules bypass the tested rule set")
        dynamic_inbound = [block["inbound"] for block in firewall.get("dynamic", []) if "inbound" in block]
        self.assertEqual(len(dynamic_inbound), 1)
        self.assertEqual(attribute(dynamic_inbound[0], "for_each"), "${module.settings.firewall.inbound_rules}")

    def test_dns_records_use_the_pop_name_and_ttl(self):
        records = [body for resource_type, _, body in resources(self.pop) if resource_type == "linode_domain_record"]
        self.assertEqual(sorted(attribute(body, "record_type") for body in records), ["A", "AAAA"])
        for body in records:
            self.assertEqual(attribute(body, "name"), "${module.settings.dns.record_name}")
            self.assertEqual(attribute(body, "ttl_sec"), "${module.settings.dns.ttl}")


class FleetExample(unittest.TestCase):
    def setUp(self):
        self.fleet = load_dir("examples/fleet")

    def test_provider_takes_no_credentials_from_files(self):
        for block in self.fleet.get("provider", []):
            for settings in block.values():
                self.assertNotIn("token", settings)

    def test_pops_come_from_the_validated_fleet_map(self):
        modules = named_blocks(self.fleet, "module")
        self.assertEqual(attribute(modules["fleet"], "source"), "../../modules/fleet_plan")
        self.assertEqual(attribute(modules["fleet"], "pops"), "${var.pops}")
        self.assertEqual(attribute(modules["pop"], "source"), "../../modules/pop")
        self.assertEqual(attribute(modules["pop"], "for_each"), "${module.fleet.pops}")

    def test_inventory_output_is_rendered_by_the_tested_module(self):
        modules = named_blocks(self.fleet, "module")
        self.assertEqual(attribute(modules["inventory"], "source"), "../../modules/inventory")
        outputs = named_blocks(self.fleet, "output")
        self.assertEqual(attribute(outputs["ansible_inventory"], "value"), "${module.inventory.yaml}")
        self.assertEqual(attribute(outputs["pops"], "value"), "${module.inventory.hosts}")


if __name__ == "__main__":
    unittest.main(verbosity=1)
