package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/berthhq/berth/runtime/kubernetes/kubetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.StopShared()
	os.Exit(code)
}

// kustomize renders a kustomization of deploy/kubernetes, as
// `kubectl kustomize` would.
func kustomize(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(root(t), dir))
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range res.Resources() {
		b, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		o := new(unstructured.Unstructured)
		if err := o.UnmarshalJSON(b); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o)
	}
	return objs
}

// apply creates objs on the cluster (with dryRun, only as a server-side
// dry run: admission and validation, nothing stored). The namespace
// "berth" must exist for a dry run of what goes in it.
func apply(t *testing.T, c *kubetest.Cluster, objs []*unstructured.Unstructured, dryRun bool) {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	opts := metav1.CreateOptions{FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Errorf("%s %s: %v", gvk.Kind, o.GetName(), err)
			continue
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		if _, err := ri.Create(context.Background(), o, opts); err != nil && !(apierrors.IsAlreadyExists(err) && gvk.Kind == "Namespace") {
			t.Errorf("create %s %s/%s (dry run %v): %v", gvk.Kind, o.GetNamespace(), o.GetName(), dryRun, err)
		}
	}
}

// TestKubernetes_manifests renders deploy/kubernetes and its postgres
// overlay and has the real API server validate every object (a
// server-side dry run with strict field validation), then checks what the
// issue asks of them.
func TestKubernetes_manifests(t *testing.T) {
	c := kubetest.Shared(t)
	if _, err := c.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "berth"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, dir := range []string{"deploy/kubernetes", "deploy/kubernetes/postgres"} {
		t.Run(dir, func(t *testing.T) {
			objs := kustomize(t, dir)
			kinds := map[string]int{}
			for _, o := range objs {
				kinds[o.GetKind()]++
				if o.GetKind() != "Namespace" && o.GetNamespace() != "berth" {
					t.Errorf("%s %s is in namespace %q, want berth", o.GetKind(), o.GetName(), o.GetNamespace())
				}
			}
			for _, k := range []string{"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment", "PodDisruptionBudget"} {
				if kinds[k] != 1 {
					t.Errorf("%d %s, want 1", kinds[k], k)
				}
			}
			if kinds["Service"] != 3 {
				t.Errorf("%d Services, want 3 (control API, proxy, backend API)", kinds["Service"])
			}
			if kinds["ClusterRole"]+kinds["ClusterRoleBinding"] != 0 {
				t.Error("a cluster-wide role: Berth needs only its namespace")
			}
			for _, o := range objs {
				if o.GetKind() == "Service" {
					if typ, _, _ := unstructured.NestedString(o.Object, "spec", "type"); typ != "ClusterIP" {
						t.Errorf("Service %s is %s, want ClusterIP", o.GetName(), typ)
					}
				}
				if o.GetKind() == "Deployment" {
					checkDeployment(t, o)
				}
			}
			apply(t, c, objs, true)
		})
	}
}

func checkDeployment(t *testing.T, o *unstructured.Unstructured) {
	t.Helper()
	ctrs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if len(ctrs) != 1 {
		t.Fatalf("%d containers, want 1", len(ctrs))
	}
	ctr := ctrs[0].(map[string]any)
	for _, probe := range []string{"readinessProbe", "livenessProbe"} {
		if p, _, _ := unstructured.NestedString(ctr, probe, "httpGet", "path"); p != "/healthz" {
			t.Errorf("%s path %q, want /healthz", probe, p)
		}
	}
	secrets := map[string]bool{}
	env, _, _ := unstructured.NestedSlice(ctr, "env")
	for _, e := range env {
		e := e.(map[string]any)
		if _, ok, _ := unstructured.NestedMap(e, "valueFrom", "secretKeyRef"); ok {
			secrets[e["name"].(string)] = true
		}
	}
	for _, name := range []string{"BERTH_API_KEY", "BERTH_TOKEN_KEY"} {
		if !secrets[name] {
			t.Errorf("%s does not come from a Secret", name)
		}
	}
	if sa, _, _ := unstructured.NestedString(o.Object, "spec", "template", "spec", "serviceAccountName"); sa != "berth" {
		t.Errorf("serviceAccountName %q, want berth", sa)
	}
}

// TestKubernetes_rbac applies the ServiceAccount and its Role for real, and
// asks the API server, as that ServiceAccount (impersonation) and through
// SubjectAccessReviews, what it may do: run backends in its namespace,
// nothing outside it, no Secrets.
func TestKubernetes_rbac(t *testing.T) {
	c := kubetest.Shared(t)
	var objs []*unstructured.Unstructured
	for _, o := range kustomize(t, "deploy/kubernetes") {
		switch o.GetKind() {
		case "Namespace", "ServiceAccount", "Role", "RoleBinding":
			objs = append(objs, o)
		}
	}
	apply(t, c, objs, false)
	if t.Failed() {
		t.FailNow()
	}
	const user = "system:serviceaccount:berth:berth"
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:berth", "system:authenticated"}
	ctx := context.Background()

	tests := []struct {
		ns, verb, resource, sub string
		allowed                 bool
	}{
		{"berth", "create", "pods", "", true},
		{"berth", "watch", "pods", "", true},
		{"berth", "delete", "pods", "", true},
		{"berth", "get", "pods", "log", true},
		{"berth", "create", "persistentvolumeclaims", "", true},
		{"berth", "list", "events", "", true},
		{"berth", "get", "secrets", "", false},
		{"berth", "create", "pods", "exec", false},
		{"berth", "create", "deployments", "", false},
		{"berth", "update", "roles", "", false},
		{"default", "create", "pods", "", false},
		{"default", "list", "pods", "", false},
		{"kube-system", "get", "secrets", "", false},
		{"", "list", "nodes", "", false},
		{"", "create", "namespaces", "", false},
		{"", "list", "persistentvolumes", "", false},
	}
	// The authorizer learns of the Role and its binding through its own
	// informers, a moment after they are stored: wait until the first
	// permission it grants shows, then ask the rest.
	waitAllowed(t, c, user, groups, authorizationv1.ResourceAttributes{Namespace: "berth", Verb: "create", Resource: "pods"})
	for _, tt := range tests {
		group := ""
		switch tt.resource {
		case "deployments":
			group = "apps"
		case "roles":
			group = "rbac.authorization.k8s.io"
		}
		sar, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: tt.ns, Verb: tt.verb, Group: group, Resource: tt.resource, Subresource: tt.sub},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != tt.allowed {
			t.Errorf("%s %s/%s in %q: allowed %v, want %v (%s)", tt.verb, tt.resource, tt.sub, tt.ns, sar.Status.Allowed, tt.allowed, sar.Status.Reason)
		}
	}

	// The same, by acting as the ServiceAccount.
	as, err := c.Impersonate(user, groups...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := as.CoreV1().Pods("berth").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list Pods in berth as the ServiceAccount: %v", err)
	}
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "rbac-probe"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "scratch"}}}}
	forbidden := map[string]error{}
	_, forbidden["create a Pod in default"] = as.CoreV1().Pods("default").Create(ctx, pod, dry)
	_, forbidden["list Secrets in berth"] = as.CoreV1().Secrets("berth").List(ctx, metav1.ListOptions{})
	_, forbidden["list Pods of all namespaces"] = as.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	_, forbidden["list Nodes"] = as.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	_, forbidden["create a Namespace"] = as.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "rbac-probe"}}, dry)
	for what, err := range forbidden {
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s as the ServiceAccount: %v, want Forbidden", what, err)
		}
	}
	// Admission wants the namespace's "default" ServiceAccount, which no
	// controller manager makes here.
	if _, err := c.Client.CoreV1().ServiceAccounts("berth").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := as.CoreV1().Pods("berth").Create(ctx, pod, dry); err != nil {
		t.Errorf("create a Pod in berth as the ServiceAccount (dry run): %v", err)
	}
}

// waitAllowed asks the API server until it allows attrs to user, for up to
// 30 s: RBAC objects take effect once the authorizer's caches have them.
func waitAllowed(t *testing.T, c *kubetest.Cluster, user string, groups []string, attrs authorizationv1.ResourceAttributes) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		sar, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: groups, ResourceAttributes: &attrs,
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s in %q is still not allowed to %s 30 s after the Role was applied (%s)", attrs.Verb, attrs.Resource, attrs.Namespace, user, sar.Status.Reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
